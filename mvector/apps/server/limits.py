"""The request body limits, enforced before and while the body arrives.

Size: a declared Content-Length over the limit is refused before any of the body is read; a body
without one (chunked) is counted as it streams, and refused as soon as it passes the limit, so an
upload never has to be held whole to be found too big. Time: a client that stops sending its body,
or sends it too slowly to finish within the total allowed, gets a 408 and its connection is freed
(a trickling body would otherwise hold a connection and a worker's memory for ever).
"""
import asyncio
import time

from starlette.exceptions import HTTPException

# The longest wait for the next piece of a body, and the longest a whole body may take
# (a 120 MiB upload at 0.5 MiB/s).
DEFAULT_BODY_CHUNK_TIMEOUT = 30.0
DEFAULT_BODY_TIMEOUT = 240.0
from starlette.responses import JSONResponse


def too_large_message(limit: int) -> str:
    return f"upload too large: the request body may be at most {limit / 2**20:g} MiB ({limit} bytes)"


class UploadTooLarge(HTTPException):
    """Raised from ``receive`` mid-body; an HTTPException so FastAPI passes it through its body
    parsing (which turns other errors into a 400) to the 413 handler."""

    def __init__(self, limit: int):
        super().__init__(status_code=413, detail=too_large_message(limit))


class BodyTooSlow(HTTPException):
    """Raised from ``receive`` when the body stalls or takes too long (408)."""

    def __init__(self, seconds: float, received: int):
        super().__init__(status_code=408, detail=f"request body too slow: {received} bytes arrived in "
                                                 f"{seconds:.0f} s; send the whole upload without pausing")


class RequestBodyLimits:
    """ASGI middleware: 413 for HTTP request bodies over ``max_bytes``, or over the limit
    ``per_path`` gives the request's path (e.g. a larger one for long recordings to diarize); 408
    when the next piece of a body takes over ``chunk_timeout`` s or the whole over ``total_timeout``."""

    def __init__(self, app, max_bytes: int, per_path: dict | None = None,
                 chunk_timeout: float = DEFAULT_BODY_CHUNK_TIMEOUT, total_timeout: float = DEFAULT_BODY_TIMEOUT):
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = per_path or {}
        self.chunk_timeout = chunk_timeout
        self.total_timeout = total_timeout

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
        started = time.monotonic()
        finished = False

        async def counting_receive():
            nonlocal received, finished
            if finished:  # after the body only a disconnect can come, which may take any time
                return await receive()
            wait = min(self.chunk_timeout, self.total_timeout - (time.monotonic() - started))
            try:
                message = await asyncio.wait_for(receive(), timeout=max(wait, 0.0))
            except asyncio.TimeoutError:
                raise BodyTooSlow(time.monotonic() - started, received) from None
            finished = message["type"] != "http.request" or not message.get("more_body", False)
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


class FormTextNotUtf8(HTTPException):
    def __init__(self, field: str):
        super().__init__(status_code=422, detail=f"form field {field!r} is not valid UTF-8 text")


class Utf8FormFields:
    """ASGI middleware: 422 for a multipart form whose text fields (the parts that are not files)
    are not valid UTF-8. Starlette would decode them as Latin-1 instead, so a name sent in another
    encoding became a different user than the one meant; this check reads the form's bytes as they
    stream past (python-multipart, the parser Starlette itself uses), never holding the body."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        boundary = _multipart_boundary(scope) if scope["type"] == "http" else None
        if boundary is None:
            await self.app(scope, receive, send)
            return
        from python_multipart.multipart import MultipartParser, parse_options_header

        part = {}

        def on_part_begin():
            part.clear()
            part.update(header=b"", headers=[], data=bytearray(), file=False, name="?")

        def on_header_field(data, start, end):
            part["header"] += data[start:end]

        def on_header_value(data, start, end):
            part["headers"].append((part["header"].lower(), data[start:end]))
            part["header"] = b""

        def on_headers_finished():
            for header, value in part["headers"]:
                if header == b"content-disposition":
                    options = parse_options_header(value)[1]
                    part["file"] = b"filename" in options
                    part["name"] = options.get(b"name", b"?").decode("utf-8", "replace")

        def on_part_data(data, start, end):
            if not part["file"]:
                part["data"] += data[start:end]

        def on_part_end():
            if not part["file"]:
                try:
                    bytes(part["data"]).decode("utf-8")
                except UnicodeDecodeError:
                    raise FormTextNotUtf8(part["name"]) from None

        parser = MultipartParser(boundary, callbacks={
            "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
            "on_headers_finished": on_headers_finished, "on_part_data": on_part_data, "on_part_end": on_part_end})

        async def checking_receive():
            message = await receive()
            if message["type"] == "http.request" and message.get("body"):
                try:
                    parser.write(message["body"])
                except FormTextNotUtf8:
                    raise
                except Exception:  # malformed multipart: Starlette's own parser answers it
                    pass
            return message

        await self.app(scope, checking_receive, send)


def _multipart_boundary(scope) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            from python_multipart.multipart import parse_options_header

            kind, options = parse_options_header(value)
            return options.get(b"boundary") if kind == b"multipart/form-data" else None
    return None
