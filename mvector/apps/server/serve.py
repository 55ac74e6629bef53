"""Start the service: check the settings, load the model and the voiceprint library, run uvicorn.

The checks that need neither FastAPI nor torch (the key, the bind address, the limits) come first,
so a wrong command line fails in a moment with one line on stderr and exit status 2.
"""

import errno
import socket
import sys

from mvector.errors import ConfigError, MVectorError
from mvector.apps.server.guard import parse_allowed_hosts
from mvector.apps.server.security import check_bind, is_loopback, resolve_api_key

EXIT_ERROR = 2
MAX_PORT = 65535


def check_can_listen(host: str, port: int) -> None:
    """Bind ``host:port`` once (as uvicorn will, address reuse on): a busy port or an address this
    machine does not have is one line, not uvicorn's log and traceback after the model has loaded."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            busy = exc.errno == errno.EADDRINUSE
            raise ConfigError(f"cannot listen on {host}:{port}: "
                              + ("another program is using that port; stop it or choose another --port" if busy
                                 else f"{exc.strerror}")) from None


def serve(host: str = "127.0.0.1", port: int = 8000, model_dir=None, audio_db_path="audio_db/",
          api_key_file=None, max_upload_mb: float = 10.0, max_audio_seconds: float = 60.0,
          threshold: float | str | None = None, use_gpu: bool = False, max_concurrency: int = 2,
          backend: str = "auto", model: str | None = None, allowed_hosts: str | None = None,
          max_diarize_seconds: float = 3600.0, max_diarize_upload_mb: float = 120.0,
          header_timeout: float = 10.0, body_timeout: float = 240.0, max_connections: int = 4096) -> int:
    """Serve until interrupted; returns the process exit status (on SIGTERM uvicorn shuts down
    gracefully, then ends the process by that signal)."""
    try:
        api_key = resolve_api_key(api_key_file)
        check_bind(host, api_key)
        for option, value in (("--max_upload_mb", max_upload_mb), ("--max_audio_seconds", max_audio_seconds),
                              ("--max_concurrency", max_concurrency), ("--port", port),
                              ("--max_diarize_seconds", max_diarize_seconds),
                              ("--max_diarize_upload_mb", max_diarize_upload_mb), ("--header_timeout", header_timeout),
                              ("--body_timeout", body_timeout), ("--max_connections", max_connections)):
            if not value > 0:
                raise ConfigError(f"{option} must be positive, got {value}")
        if port > MAX_PORT:
            raise ConfigError(f"--port must be at most {MAX_PORT}, got {port}")
        check_can_listen(host, port)  # before the model loads, not after as uvicorn would find out
        try:
            import uvicorn

            from mvector.apps.server.app import create_app
            from mvector.apps.server.connections import guarded_protocol, raise_open_file_limit, rate_limit_logs
        except ImportError as exc:
            raise ConfigError(f"the server needs the 'server' extra (pip install 'mvector-sv[server]'): {exc}") from None
        from mvector.inference.predictor import MVectorPredictor
        from mvector.library.stores import open_library

        predictor = MVectorPredictor(model_dir=model_dir, audio_db_path=audio_db_path, threshold=threshold,
                                     use_gpu=use_gpu, backend=backend, model=model)
        # The very library MVectorPredictor opens at audio_db_path (same model fingerprint and
        # re-embedding function), so this server and infer_recognition.py share one store.
        library = open_library(audio_db_path, embed_fn=predictor.embed_waveforms,
                               fingerprint=predictor.fingerprint(), sample_rate=predictor.sample_rate)
    except MVectorError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_ERROR
    hosts = parse_allowed_hosts(allowed_hosts, host, is_loopback(host))
    app = create_app(predictor, library, api_key=api_key, require_key_for_reads=not is_loopback(host),
                     max_upload_mb=max_upload_mb, max_audio_seconds=max_audio_seconds,
                     max_concurrency=max_concurrency, allowed_hosts=hosts, max_diarize_seconds=max_diarize_seconds,
                     max_diarize_upload_mb=max_diarize_upload_mb, body_timeout=body_timeout)
    if hosts is None:
        print("note: answering requests for any Host name; name this server's with --allowed_hosts "
              "(e.g. voiceprints.example.org) to refuse DNS-rebinding requests", file=sys.stderr)
    if api_key is None:
        print("note: no API key set, so registering and removing users is refused "
              "(set MVECTOR_API_KEY or --api_key_file)", file=sys.stderr)
    elif not is_loopback(host):
        print("note: this is plain HTTP, so the key and the audio cross the network readable; "
              "put a TLS-terminating proxy in front", file=sys.stderr)
    open_files = raise_open_file_limit()
    if open_files < max_connections + 64:
        print(f"note: this process may open only {open_files} files, fewer than --max_connections "
              f"{max_connections} needs; raise 'ulimit -n'", file=sys.stderr)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", server_header=False,
                            http=guarded_protocol(header_timeout, max_connections))  # configures logging
    rate_limit_logs()
    uvicorn.Server(config).run()
    return 0
