"""The voiceprint HTTP service and its web page: register, recognise and compare speakers over
HTTP (its OpenAPI schema is at /openapi.json). Listens on 127.0.0.1 unless told otherwise; changes
need the API key from $MVECTOR_API_KEY or --api_key_file, sent as 'Authorization: Bearer <key>', and so does
every request when listening beyond loopback (it refuses to start there without a key)."""
import argparse
import sys

from mvector.apps.cli import THRESHOLD_HELP, add_backend_argument, add_device_argument, add_model_arguments, script_parser
from mvector.apps.server.serve import serve


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser(__doc__, "infer_server.py")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--allowed_hosts", default=None,
                        help="comma-separated Host names the server answers for, * for any (default: the "
                             "loopback names when listening on loopback, any name beyond it)")
    add_model_arguments(parser, threshold=False)
    parser.add_argument("--audio_db_path", default="audio_db/",
                        help="voiceprint library folder, the same one infer_recognition.py uses")
    parser.add_argument("--api_key_file", default=None, help="file holding the API key (else $MVECTOR_API_KEY)")
    parser.add_argument("--max_upload_mb", type=float, default=10.0, help="largest request body in MiB")
    parser.add_argument("--max_audio_seconds", type=float, default=60.0, help="longest recording accepted")
    parser.add_argument("--max_diarize_seconds", type=float, default=3600.0,
                        help="longest recording /diarize accepts")
    parser.add_argument("--max_diarize_upload_mb", type=float, default=120.0,
                        help="largest request body /diarize accepts, in MiB")
    parser.add_argument("--header_timeout", type=float, default=10.0,
                        help="seconds a client gets to send a request's headers before its connection is closed")
    parser.add_argument("--body_timeout", type=float, default=240.0,
                        help="seconds a request body may take to arrive (408 after; at most 30 s in one pause)")
    parser.add_argument("--max_connections", type=int, default=4096,
                        help="open connections beyond this are closed at once")
    parser.add_argument("--threshold", default=None, help=THRESHOLD_HELP)
    parser.add_argument("--max_concurrency", type=int, default=2,
                        help="decoding and model jobs running at once")
    add_device_argument(parser)
    add_backend_argument(parser)
    return parser


if __name__ == "__main__":
    sys.exit(serve(**vars(build_parser().parse_args())))
