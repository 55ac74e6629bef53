"""Embeddings of every file in a list, saved as .npz with arrays `paths` and `embeddings`.

The list has one audio path per line, or `path<TAB>label...` (first column used); relative paths
are relative to the list's folder. Unusable files are reported and skipped.

    python extract_embeddings.py --list dataset/enroll_list.txt --out enroll.npz [--model_dir models/...]
"""
import sys

from mvector.apps.cli import add_backend_argument, add_device_argument, add_model_arguments, extract, run_cli, script_parser


def parse_args(argv=None):
    parser = script_parser(__doc__, "extract_embeddings.py")
    parser.add_argument("--list", required=True, help="file list: one path per line, or path<TAB>label")
    parser.add_argument("--out", required=True, help="output .npz file")
    add_model_arguments(parser, threshold=False)
    parser.add_argument("--batch_size", type=int, default=16, help="utterances per forward pass")
    add_device_argument(parser)
    add_backend_argument(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    sys.exit(run_cli(extract, args.list, args.out, model_dir=args.model_dir, batch_size=args.batch_size,
                     use_gpu=args.use_gpu, backend=args.backend, model=args.model))
