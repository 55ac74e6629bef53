"""Which Host and Origin the service answers: a guard against DNS rebinding and cross-site requests.

A page on another site can make a browser send requests to a server on this machine: through DNS
rebinding (an attacker's name that resolves to 127.0.0.1, so the browser treats the answers as
the attacker's own), or through a cross-site form or fetch. The first carries a foreign ``Host``
header, the second a foreign ``Origin``. So the server answers only Host names on its allow-list
(loopback names by default when it listens on loopback), and refuses every request that carries an
Origin other than its own, before any audio is decoded. Clients that are not browsers send no
Origin and are unaffected.
"""

from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def parse_allowed_hosts(text: str | None, bind_host: str, loopback: bool) -> frozenset | None:
    """The allow-list from ``--allowed_hosts`` (comma-separated names; ``*`` any), by default the
    loopback names (and the bind address) on loopback, any host beyond it. None means any."""
    if text is None:
        return LOOPBACK_NAMES | {bind_host.strip("[]").lower()} if loopback else None
    names = {name.strip().strip("[]").lower() for name in text.split(",") if name.strip()}
    return None if "*" in names else frozenset(names)


def _hostname(authority: str) -> str:
    """``host[:port]`` or ``[v6]:port`` -> the lower-case name or address."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:authority.find("]")] if "]" in authority else authority
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


class HostOriginGuard:
    """ASGI middleware: 400 for a Host not on ``allowed_hosts`` (None: any), 403 for a foreign Origin."""

    def __init__(self, app, allowed_hosts: frozenset | None):
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name: value.decode("latin-1") for name, value in scope.get("headers", ())}
        host = headers.get(b"host", "")
        if self.allowed_hosts is not None and _hostname(host) not in self.allowed_hosts:
            await self._refuse(scope, receive, send, 400,
                               f"this server does not answer for Host {host[:100]!r}; it answers for "
                               f"{', '.join(sorted(self.allowed_hosts))} (--allowed_hosts)")
            return
        origin = headers.get(b"origin")
        if origin is not None:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.strip().lower():
                await self._refuse(scope, receive, send, 403,
                                   f"cross-site request refused: Origin {origin[:100]!r} is not this server's")
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope, receive, send, status: int, detail: str):
        from starlette.responses import JSONResponse  # the server extra; parse_allowed_hosts needs none

        await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
