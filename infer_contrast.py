"""Compare two recordings: prints their similarity and whether they are the same speaker.

    python infer_contrast.py --audio_path1 a.wav --audio_path2 b.flac [--model_dir models/...]
"""
import sys

from mvector.apps.cli import add_backend_argument, add_device_argument, add_model_arguments, contrast, run_cli, script_parser


def parse_args(argv=None):
    parser = script_parser(__doc__, "infer_contrast.py")
    parser.add_argument("--audio_path1", required=True, help="first recording")
    parser.add_argument("--audio_path2", required=True, help="second recording")
    add_model_arguments(parser)
    add_device_argument(parser)
    add_backend_argument(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    sys.exit(run_cli(contrast, args.audio_path1, args.audio_path2, model_dir=args.model_dir,
                     threshold=args.threshold, use_gpu=args.use_gpu, backend=args.backend, model=args.model))
