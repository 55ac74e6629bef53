"""Write the data lists (dataset/train_list.txt, enroll_list.txt, trials_list.txt, trials.tsv,
speakers.json, dev_speakers.json) that training and evaluation read. See mvector/training/corpus.py
for the layouts."""
import sys
from pathlib import Path

from mvector.apps.cli import create_lists, run_cli, script_parser
from mvector.training.corpus import LAYOUTS


def parse_args(argv=None):
    parser = script_parser(__doc__, "create_data.py")
    parser.add_argument("--data_root", default=None,
                        help="corpus folder (default: ../shared/data beside this checkout, when present)")
    parser.add_argument("--out_dir", default="dataset", help="where the lists are written")
    parser.add_argument("--layout", default="auto", choices=["auto", *LAYOUTS],
                        help="corpus layout; auto recognises shared (train/ and dev/ sets), list (one set's list.tsv), cnceleb "
                             "and voxceleb, else speaker folders")
    parser.add_argument("--train_dir", default=None, help="training set folder, relative to data_root or absolute")
    parser.add_argument("--dev_dir", default=None, help="evaluation set folder, relative to data_root or absolute")
    parser.add_argument("--num_threads", type=int, default=16, help="threads probing audio durations")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    return run_cli(create_lists, checkout=Path(__file__).resolve().parent, **vars(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
