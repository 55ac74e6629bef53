"""Who may call the service: the API key, where it comes from, and when it is needed.

Changes (register, remove) always need the key. Reads need it too when the server listens beyond
loopback, because recognition answers tell a caller who is enrolled.
"""

import hmac
import ipaddress
import os
from pathlib import Path

from mvector.errors import ConfigError

API_KEY_ENV = "MVECTOR_API_KEY"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the service reachable from this machine only. Host names
    other than ``localhost`` may resolve anywhere, so they count as beyond loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_api_key(api_key_file=None, environ=os.environ) -> str | None:
    """The key from ``api_key_file`` (its stripped text) when given, else from $MVECTOR_API_KEY;
    None when neither gives one. ConfigError for an unreadable or empty key file, or a key that is not
    printable ASCII (a header could never carry it, so nobody could authenticate)."""
    if api_key_file is not None:
        try:
            key = Path(api_key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--api_key_file {api_key_file}: cannot read the API key ({exc})") from None
        if not key:
            raise ConfigError(f"--api_key_file {api_key_file}: the file is empty")
        where = f"--api_key_file {api_key_file}"
    else:
        key, where = environ.get(API_KEY_ENV, "").strip() or None, f"${API_KEY_ENV}"
        if key is None:
            return None
    if not key.isascii() or not key.isprintable():
        raise ConfigError(f"{where}: the API key must be printable ASCII characters")
    return key


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to serve beyond loopback without a key: anyone who can reach the port could then
    enrol voices and learn who is enrolled."""
    if api_key is None and not is_loopback(host):
        raise ConfigError(f"refusing to listen on {host} without an API key: set {API_KEY_ENV} or "
                          "--api_key_file (or listen on 127.0.0.1)")


def key_matches(expected: str, presented: str) -> bool:
    """Whether the key a caller presented is ``expected``; the comparison takes the same time
    wherever the keys differ, so timing reveals nothing about the key."""
    return hmac.compare_digest(presented.strip().encode("utf-8"), expected.encode("utf-8"))
