"""Voiceprint recognition from the microphone or audio files: an interactive menu, or one action
per run (--register NAME, --recognize, --list, --remove NAME); see --help for the flags and
mvector/apps/recognition.py for the exit codes."""
import sys

from mvector.apps.recognition import main

if __name__ == "__main__":
    sys.exit(main())
