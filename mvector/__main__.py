"""``python -m mvector``: a quick check that the installed package works.

Without arguments it embeds a generated 2 s voice-like signal and prints the embedding size and
speed (with the shipped model, or the default config's model with random weights while none is
shipped); with ``--audio_path1``/``--audio_path2`` it compares two recordings; ``--list_models``
lists the packaged models with their dev-set figures.
"""
import sys

from mvector.apps.cli import add_device_argument, list_models, quick_check, run_cli, script_parser


def main(argv=None) -> int:
    parser = script_parser(__doc__, "python -m mvector")
    parser.add_argument("--model_dir", default=None, help="model directory (default: the packaged model)")
    parser.add_argument("--audio_path1", default=None, help="first recording to compare")
    parser.add_argument("--audio_path2", default=None, help="second recording to compare")
    add_device_argument(parser)
    parser.add_argument("--list_models", action="store_true", help="list the packaged models and exit")
    args = parser.parse_args(argv)
    if args.list_models:
        return run_cli(list_models)
    return run_cli(quick_check, model_dir=args.model_dir, audio_path1=args.audio_path1,
                   audio_path2=args.audio_path2, use_gpu=args.use_gpu)


if __name__ == "__main__":
    sys.exit(main())
