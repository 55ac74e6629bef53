"""The FastAPI app: register, recognise, compare and manage voiceprints over HTTP, and the web page.

Every answer is JSON; errors are ``{"detail": message}``: 401 without a valid key where one is
needed, 403 for changes on a server that has no key, 413 for an upload over the size limit, 422
for unusable audio, audio over the duration limit or an invalid user name, 404 for an unknown user,
503 while the library's database server cannot be reached, and a generic 500 (details in the server log, never in the answer) for anything unexpected.
"""

import asyncio
import contextlib
import functools
import io
import logging
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from mvector.audio import audio_duration
from mvector.errors import AudioError, ConfigError, MVectorError
from mvector.apps.server.batcher import MicroBatcher
from mvector.apps.server.guard import LOOPBACK_NAMES, HostOriginGuard
from mvector.apps.server.limits import DEFAULT_BODY_CHUNK_TIMEOUT, DEFAULT_BODY_TIMEOUT, RequestBodyLimits, Utf8FormFields
from mvector.apps.server.security import API_KEY_ENV, key_matches
from mvector.library.names import UserNameError, VoiceprintStorageError, VoiceprintUnavailable, normalize_user_name

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_MB = 10.0
DEFAULT_MAX_AUDIO_SECONDS = 60.0
# Diarization takes whole meetings: its own limits, an hour of audio and an upload that holds one
# (an hour of 16 kHz 16-bit WAV is 110 MiB; compressed formats far less).
DEFAULT_MAX_DIARIZE_SECONDS = 3600.0
DEFAULT_MAX_DIARIZE_UPLOAD_MB = 120.0
DEFAULT_MAX_CONCURRENCY = 2
DEFAULT_BATCH_WAIT = 0.005
# The page loads only its own files: no inline script, nothing from elsewhere.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; media-src 'self' blob:; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

log = logging.getLogger("mvector.apps.server")
_bearer = HTTPBearer(auto_error=False, description=f"the server's API key (${API_KEY_ENV})")
Threshold = Annotated[str | None, Form(max_length=32, description="a cosine in [-1, 1] or an operating point of the "
                                     "model (eer, far=0.01, far=0.001: see /health); default the server's")]


class AudioTooLong(AudioError):
    """A recording over the server's duration limit (422, like any unusable audio)."""

    def __init__(self, name: str, seconds: float, limit: float):
        super().__init__(f"{name}: {seconds:.1f} s of audio is longer than this server accepts "
                         f"({limit:g} s)")


def create_app(predictor, library, *, api_key: str | None = None, require_key_for_reads: bool = False,
               max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS,
               max_concurrency: int = DEFAULT_MAX_CONCURRENCY, batch_wait: float = DEFAULT_BATCH_WAIT,
               allowed_hosts: frozenset | None = LOOPBACK_NAMES,
               max_diarize_seconds: float = DEFAULT_MAX_DIARIZE_SECONDS,
               max_diarize_upload_mb: float = DEFAULT_MAX_DIARIZE_UPLOAD_MB,
               body_timeout: float = DEFAULT_BODY_TIMEOUT) -> FastAPI:
    """The app over ``predictor`` (an ``MVectorPredictor``: loading, embedding, threshold) and
    ``library`` (the ``VoiceprintDB`` it enrols into); the app closes both when it shuts down.
    ``api_key`` None: changes are refused.
    ``require_key_for_reads``: every API call needs the key (for servers beyond loopback).
    ``max_concurrency`` bounds the decoding and model jobs running at once.
    ``allowed_hosts``: the Host names it answers (None: any); a foreign Origin is always refused.
    ``max_diarize_seconds`` / ``max_diarize_upload_mb``: /diarize's own limits.
    ``body_timeout``: the longest a request body may take to arrive (and at most 30 s of it in one pause)."""
    if not (max_upload_mb > 0 and max_audio_seconds > 0 and max_concurrency >= 1 and max_diarize_seconds > 0
            and max_diarize_upload_mb > 0 and body_timeout > 0):
        raise ValueError("max_upload_mb, max_audio_seconds, max_concurrency, max_diarize_seconds and "
                         "max_diarize_upload_mb must be positive")
    limiter = asyncio.Semaphore(max_concurrency)
    batcher = MicroBatcher(predictor.embed_waveforms, max_batch=predictor.batch_size, max_wait=batch_wait,
                           limiter=limiter)

    def authorize(credentials: HTTPAuthorizationCredentials | None) -> None:
        if api_key is None:
            raise HTTPException(403, f"this server has no API key ({API_KEY_ENV} or --api_key_file), "
                                     "so it accepts no changes")
        if credentials is None or not key_matches(api_key, credentials.credentials):
            reason = "missing API key" if credentials is None else "wrong API key"
            raise HTTPException(401, f"{reason}: send 'Authorization: Bearer <key>'",
                                headers={"WWW-Authenticate": "Bearer"})

    def change_access(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        authorize(credentials)

    def read_access(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        if require_key_for_reads:
            authorize(credentials)

    async def read_upload(upload: UploadFile) -> io.BytesIO:
        data = io.BytesIO(await upload.read())
        data.name = f"upload '{upload.filename or 'audio'}'"[:100]  # names the input in AudioError messages
        if not data.getbuffer().nbytes:
            raise AudioError(f"{data.name}: is empty (0 bytes)")
        return data

    async def check_duration(data: io.BytesIO, limit: float) -> None:
        """The header's duration first: an over-long recording is refused before it is decoded. A
        stream without a length is counted, never past the limit (a decompression bomb)."""
        seconds = await run_in_threadpool(functools.partial(audio_duration, data, name=data.name, max_duration=limit))
        if seconds > limit:
            raise AudioTooLong(data.name, seconds, limit)
        data.seek(0)

    async def load_upload(upload: UploadFile) -> tuple[np.ndarray, float]:
        """The upload as the model hears it, and its duration; AudioError when unusable or too long."""
        data = await read_upload(upload)
        async with limiter:
            await check_duration(data, max_audio_seconds)
            # Decoding stops at the limit too: the metadata may understate the length.
            wav = await run_in_threadpool(functools.partial(predictor.load, data, max_duration=max_audio_seconds))
        seconds = len(wav) / predictor.sample_rate
        if seconds > max_audio_seconds:  # a container whose metadata understated its length
            raise AudioTooLong(data.name, seconds, max_audio_seconds)
        return wav, seconds

    async def embed_upload(upload: UploadFile) -> tuple[np.ndarray, np.ndarray, float]:
        wav, seconds = await load_upload(upload)
        return wav, await batcher.embed(wav), seconds

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        # Here, not after uvicorn.run: on SIGTERM uvicorn re-raises the signal once it has shut
        # down, so the process ends without returning to its caller.
        library.close()
        predictor.close()

    # No /docs or /redoc: FastAPI's pages load Swagger and ReDoc from a CDN, a third party's script on
    # this API's origin. The schema itself is served (/openapi.json) for offline viewers.
    app = FastAPI(title="mvector voiceprint service", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Speaker registration, recognition and verification. Changes need "
                              "'Authorization: Bearer <key>'; so does every call when the server "
                              "listens beyond loopback.",
                  version="1")
    app.add_middleware(Utf8FormFields)
    app.add_middleware(RequestBodyLimits, max_bytes=int(max_upload_mb * 2**20),
                       per_path={"/diarize": int(max_diarize_upload_mb * 2**20)},
                       chunk_timeout=min(DEFAULT_BODY_CHUNK_TIMEOUT, body_timeout), total_timeout=body_timeout)
    app.add_middleware(HostOriginGuard, allowed_hosts=allowed_hosts)  # before the body is read
    app.add_exception_handler(AudioError, _unprocessable)
    app.add_exception_handler(UserNameError, _unprocessable)
    app.add_exception_handler(VoiceprintStorageError, _insufficient_storage)
    app.add_exception_handler(VoiceprintUnavailable, _unavailable)
    app.add_exception_handler(MVectorError, _internal_error)
    # Not an Exception handler: Starlette re-raises after one of those, so the server logged the traceback
    # a second time and dropped the keep-alive connection without saying so.
    app.add_middleware(UnexpectedErrors)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def chosen_threshold(value):
        """The request's threshold as a cosine (422 naming the model's operating points when unknown)."""
        try:
            return predictor.resolve_threshold(value)
        except ConfigError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    @app.get("/health", dependencies=[Depends(read_access)])
    async def health():
        """Liveness, the server's settings, and how much its requests have been batched."""
        return {"status": "ok", "threshold": predictor.threshold, "operating_points": predictor.operating_points,
                "sample_rate": predictor.sample_rate,
                "embedding_size": predictor.embd_dim, "max_upload_mb": max_upload_mb,
                "max_audio_seconds": max_audio_seconds, "max_diarize_seconds": max_diarize_seconds,
                "max_diarize_upload_mb": max_diarize_upload_mb, "key_for_reads": require_key_for_reads,
                "accepts_changes": api_key is not None, "batching": batcher.stats()}

    @app.post("/register", dependencies=[Depends(change_access)])
    async def register(audio: Annotated[UploadFile, File(description="a recording of the speaker")],
                       name: Annotated[str, Form(description="the speaker's user name")]):
        """Add a recording to user ``name``'s voiceprint, creating the user if new."""
        name = normalize_user_name(name)  # before any decoding: a bad name costs nothing
        wav, embedding, seconds = await embed_upload(audio)
        await run_in_threadpool(library.register, name, wav, embedding)
        return {"name": name, "seconds": round(seconds, 3)}

    @app.post("/recognize", dependencies=[Depends(read_access)])
    async def recognize(audio: Annotated[UploadFile, File(description="a recording of someone to identify")],
                        threshold: Threshold = None):
        """The best-matching registered user: ``name`` is null when the best score is below the
        threshold (``score`` null as well when nobody is registered)."""
        threshold = chosen_threshold(threshold)
        _, embedding, _ = await embed_upload(audio)
        name, score = await run_in_threadpool(library.recognition, embedding, threshold)
        return {"name": name, "score": score, "threshold": threshold, "recognized": name is not None}

    @app.post("/contrast", dependencies=[Depends(read_access)])
    async def contrast(audio1: Annotated[UploadFile, File(description="first recording")],
                       audio2: Annotated[UploadFile, File(description="second recording")],
                       threshold: Threshold = None):
        """Cosine similarity of two recordings, and whether it reaches the same-speaker threshold."""
        threshold = chosen_threshold(threshold)
        (_, first, _), (_, second, _) = await asyncio.gather(embed_upload(audio1), embed_upload(audio2))
        score = float(np.clip(np.dot(first, second), -1.0, 1.0))
        return {"score": score, "threshold": threshold, "same_speaker": score >= threshold}

    @app.post("/diarize", dependencies=[Depends(read_access)])
    async def diarize(audio: Annotated[UploadFile, File(description="a recording of a conversation or meeting")],
                      num_speakers: Annotated[int | None, Form(ge=1, le=100, description="the number of speakers, "
                                                               "when known (default: estimated)")] = None,
                      name_speakers: Annotated[bool, Form(description="name speakers from the voiceprint "
                                                          "library")] = False):
        """Who spoke when: time-ordered segments in seconds. Speakers are speaker-1, speaker-2, ...
        or, with ``name_speakers``, their enrolled names where the score passes the server's threshold
        (else unknown-1, ...). Overlapping speech is given to one speaker."""
        data = await read_upload(audio)
        async with limiter:  # minutes of work for an hour of audio: in a worker thread, one slot of the limit
            await check_duration(data, max_diarize_seconds)
            segments = await run_in_threadpool(functools.partial(
                predictor.diarize, data, num_speakers=num_speakers, name_speakers=name_speakers, library=library,
                max_duration=max_diarize_seconds))
        return {"segments": [segment._asdict() for segment in segments],
                "speakers": list(dict.fromkeys(segment.speaker for segment in segments))}

    @app.get("/users", dependencies=[Depends(read_access)])
    async def users():
        """Registered user names, sorted."""
        names = await run_in_threadpool(library.get_users)
        return {"users": names, "count": len(names)}

    @app.delete("/users/{name}", dependencies=[Depends(change_access)])
    async def remove_user(name: str):
        """Erase a user: voiceprint and enrolment audio."""
        name = normalize_user_name(name)
        if not await run_in_threadpool(library.remove_user, name):
            raise HTTPException(404, f"no user named {name!r}")
        return {"removed": name}

    return app


async def _unprocessable(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


class UnexpectedErrors:
    """ASGI middleware: an unexpected exception is logged once and answered with a generic 500, the
    connection kept as for any other answer (nothing reaches the server as an app crash)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            request = Request(scope)
            if started:  # too late for another answer: the server must close the connection
                raise
            await (await _internal_error(request, exc))(scope, receive, send)


async def _insufficient_storage(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": str(exc)}, status_code=507)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the log; the caller only learns that it was not their fault.
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal server error (details are in the server log)"}, status_code=500)
