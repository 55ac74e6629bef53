"""``python -m mvector.library``: see ``mvector.apps.library``."""
import sys

from mvector.apps.library import main

if __name__ == "__main__":
    sys.exit(main())
