"""Score every training utterance's loss with a trained model, for sample-loss curation.

    python score_losses.py --model_dir models/CAMPPlus_Fbank/last_model --out losses.tsv

Writes path<TAB>label<TAB>loss; point train_conf.curation.loss_file at it to leave the hardest
(likely mislabelled) and easiest utterances out of later epochs.
"""
import logging
import sys

from mvector.apps.cli import add_device_argument, log_to_stderr, run_cli, score_training_losses, script_parser


def parse_args(argv=None):
    parser = script_parser(__doc__, "score_losses.py")
    parser.add_argument("--model_dir", required=True, help="trained model directory (e.g. .../last_model)")
    parser.add_argument("--train_list", help="list to score (default: the model's dataset_conf.train_list)")
    parser.add_argument("--out", required=True, help="output TSV path<TAB>label<TAB>loss")
    parser.add_argument("--max_duration", type=float,
                        help="score the central this-many seconds; 0 = whole utterance "
                             "(default: dataset_conf.eval_max_duration)")
    parser.add_argument("--batch_size", type=int, help="utterances per batch (default: dataset_conf.eval_batch_size)")
    parser.add_argument("--num_workers", type=int, help="audio decoding workers (default: dataset_conf.num_workers)")
    add_device_argument(parser, default="auto")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = vars(parse_args(argv))
    log_to_stderr(logging.WARNING)
    return run_cli(score_training_losses, progress=not args.pop("no_progress"), **args)


if __name__ == "__main__":
    sys.exit(main())
