"""What the HTTP server itself does not bound: how many connections are open, how long a client
may take to send its request headers, and how fast the error log may grow.

Without these, connections that trickle their headers a byte at a time (or send nothing) are held
forever: enough of them exhaust the file descriptors and every real request fails, while each
failed accept writes a log line. uvicorn closes idle keep-alive connections but has no deadline
for the headers of a request, so its h11 protocol is extended here with one.
"""
import logging
import resource
import time

from uvicorn.protocols.http.h11_impl import H11Protocol

# A client gets this long to send a request's line and headers (nginx: client_header_timeout, 60 s).
DEFAULT_HEADER_TIMEOUT = 10.0
# Open connections beyond this are closed at once, before anything is read from them.
DEFAULT_MAX_CONNECTIONS = 4096
# Per logger and message: this many records per window, then one line saying how many were dropped.
LOG_BURST = 10
LOG_WINDOW_SECONDS = 10.0


def guarded_protocol(header_timeout: float = DEFAULT_HEADER_TIMEOUT, max_connections: int = DEFAULT_MAX_CONNECTIONS):
    """An h11 protocol class with a deadline for request headers and a cap on open connections."""

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._header_deadline = None
            if len(self.connections) > max_connections:
                transport.abort()  # shed the connection before it costs anything more
                return
            self._arm_header_deadline()

        def _arm_header_deadline(self):
            self._cancel_header_deadline()
            self._header_deadline = self.loop.call_later(header_timeout, self._headers_too_slow)

        def _cancel_header_deadline(self):
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _headers_too_slow(self):
            self._header_deadline = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                self.transport.abort()

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def handle_events(self):
            super().handle_events()
            if not self._waiting_for_headers():  # a request's headers have arrived: the app's limits apply
                self._cancel_header_deadline()

        def on_response_complete(self):
            super().on_response_complete()
            if not self.transport.is_closing() and self._waiting_for_headers():
                self._arm_header_deadline()  # the next request on this connection gets its own deadline

        def connection_lost(self, exc):
            self._cancel_header_deadline()
            super().connection_lost(exc)

    return GuardedH11Protocol


class RateLimitedLog(logging.Filter):
    """Lets through at most LOG_BURST records of each message per LOG_WINDOW_SECONDS, then one line
    saying how many were dropped, so a flood of identical failures cannot fill the disk."""

    def __init__(self, burst: int = LOG_BURST, window: float = LOG_WINDOW_SECONDS):
        super().__init__()
        self.burst, self.window = burst, window
        self._seen = {}  # (logger, message template) -> [window start, count]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg if isinstance(record.msg, str) else repr(type(record.msg)))
        now = time.monotonic()
        start, count = self._seen.get(key, (now, 0))
        if now - start >= self.window:
            if count > self.burst:
                record.msg = f"{record.msg} [{count - self.burst} more like this in the last {now - start:.0f} s were not logged]"
            start, count = now, 0
        self._seen[key] = (start, count + 1)
        return count < self.burst


def rate_limit_logs(names=("uvicorn.error", "uvicorn.access", "asyncio", "mvector.apps.server")) -> None:
    """Put a RateLimitedLog on the handlers that the server's log records reach."""
    log_filter = RateLimitedLog()
    handlers = set(logging.getLogger().handlers)
    for name in names:
        handlers.update(logging.getLogger(name).handlers)
    for handler in handlers:
        handler.addFilter(log_filter)


def raise_open_file_limit() -> int:
    """The soft limit on open files raised to the hard one (connections are files); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 65536 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
