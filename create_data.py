"""Write the data lists (dataset/train_list.txt, enroll_list.txt, trials_list.txt, trials.tsv,
speakers.json) that training and evaluation read. See mvector/training/corpus.py for the layouts."""
import argparse
import sys
from pathlib import Path

from mvector.training.corpus import LAYOUTS, create_data_lists, default_data_root
from mvector.errors import MVectorError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data_root", default=None,
                        help="corpus folder (default: ../shared/data beside this checkout, when present)")
    parser.add_argument("--out_dir", default="dataset", help="where the lists are written")
    parser.add_argument("--layout", default="auto", choices=["auto", *LAYOUTS],
                        help="corpus layout; auto recognises shared, cnceleb and voxceleb, else speaker folders")
    parser.add_argument("--train_dir", default=None, help="training set folder, relative to data_root or absolute")
    parser.add_argument("--dev_dir", default=None, help="evaluation set folder, relative to data_root or absolute")
    parser.add_argument("--num_threads", type=int, default=16, help="threads probing audio durations")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        data_root = args.data_root or default_data_root(Path(__file__).parent)
        report = create_data_lists(data_root, args.out_dir, args.layout, args.train_dir, args.dev_dir,
                                   num_threads=args.num_threads)
    except MVectorError as error:
        sys.exit(f"create_data.py: error: {error}")
    print(report.summary())


if __name__ == "__main__":
    main()
