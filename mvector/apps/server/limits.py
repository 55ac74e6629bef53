"""The request body size limit, enforced before and while the body arrives.

A declared Content-Length over the limit is refused before any of the body is read; a body
without one (chunked) is counted as it streams, and refused as soon as it passes the limit, so
an upload never has to be held whole to be found too big.
"""

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse


def too_large_message(limit: int) -> str:
    return f"upload too large: the request body may be at most {limit / 2**20:g} MiB ({limit} bytes)"


class UploadTooLarge(HTTPException):
    """Raised from ``receive`` mid-body; an HTTPException so FastAPI passes it through its body
    parsing (which turns other errors into a 400) to the 413 handler."""

    def __init__(self, limit: int):
        super().__init__(status_code=413, detail=too_large_message(limit))


class BodySizeLimit:
    """ASGI middleware: 413 for HTTP request bodies over ``max_bytes``, or over the limit
    ``per_path`` gives the request's path (e.g. a larger one for long recordings to diarize)."""

    def __init__(self, app, max_bytes: int, per_path: dict | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = per_path or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope.get("path"), self.max_bytes)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            response = JSONResponse({"detail": too_large_message(limit)}, status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise UploadTooLarge(limit)
            return message

        await self.app(scope, counting_receive, send)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server rejects a malformed length itself
    return None
