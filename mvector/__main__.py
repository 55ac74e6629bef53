"""``python -m mvector``: a quick check that the installed package works.

Without arguments it embeds a generated 2 s voice-like signal and prints the embedding size and
speed (with the shipped model, or the default config's model with random weights while none is
shipped); with ``--audio_path1``/``--audio_path2`` it compares two recordings.
"""
import argparse
import sys

from mvector.cli import quick_check, run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mvector", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", default=None, help="model directory (default: the packaged model)")
    parser.add_argument("--audio_path1", default=None, help="first recording to compare")
    parser.add_argument("--audio_path2", default=None, help="second recording to compare")
    parser.add_argument("--use_gpu", action="store_true", help="run on a CUDA GPU")
    args = parser.parse_args(argv)
    return run_cli(quick_check, model_dir=args.model_dir, audio_path1=args.audio_path1,
                   audio_path2=args.audio_path2, use_gpu=args.use_gpu)


if __name__ == "__main__":
    sys.exit(main())
