"""Evaluate a speaker-embedding model: EER and MinDCF on a trial list or on enrol x test lists.

    python eval.py --model_dir models/CAMPPlus_Fbank/best_model
    python eval.py --configs configs/cam++.yml --model_dir DIR --enroll_list E --trials_list T

The model directory carries its own config; --configs only supplies dataset list paths. Without
--trials, the model config's dataset_conf.trials is scored when it exists, else ../shared/data's dev
trials; stderr names the file and the number of trials scored. The one line on stdout is
EER: <fraction> MinDCF: <p=0.01> MinDCF@0.05: <p=0.05> threshold: <score>.
"""
import logging
import sys
from pathlib import Path

from mvector.apps.cli import BACKEND_NAMES, add_device_argument, log_to_stderr, run_cli, script_parser
from mvector.apps.evaluate import BATCHED, evaluate

# Scored when neither --trials nor the model config's trial list exists: the shared dev set beside the checkout.
SHARED_DEV_TRIALS = Path(__file__).resolve().parent.parent / "shared" / "data" / "dev" / "trials.tsv"


def parse_args(argv=None):
    parser = script_parser(__doc__, "eval.py")
    parser.add_argument("--configs", help="YAML config whose dataset list paths to use")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model_dir", help="model directory (default: the packaged default model)")
    which.add_argument("--model", help="a packaged model by name, e.g. default or small")
    parser.add_argument("--trials", help="trial list path1<TAB>path2<TAB>1|0 (default: dataset_conf.trials, "
                                         f"else {SHARED_DEV_TRIALS})")
    parser.add_argument("--enroll_list", help="enrol list path<TAB>label, scored against --trials_list")
    parser.add_argument("--trials_list", help="test list path<TAB>label, scored against every enrolled speaker")
    parser.add_argument("--as_norm_cohort", help="list path<TAB>label of training audio: turns on AS-Norm")
    parser.add_argument("--as_norm_top_k", type=int, default=300, help="AS-Norm cohort size per side")
    parser.add_argument("--window_seconds", type=float,
                        help="embed recordings longer than this as the mean of windows this long (default: the "
                             "model config's dataset_conf.embed_window)")
    parser.add_argument("--hop_seconds", type=float,
                        help="seconds between windows (default: the model config's dataset_conf.embed_hop, or "
                             "half of --window_seconds when that is given)")
    parser.add_argument("--det_plot", help="write the DET curve to this PNG")
    add_device_argument(parser)
    parser.add_argument("--batch_size", type=int,
                        help=f"utterances per batch of '{BATCHED}' extraction (default: dataset_conf.eval_batch_size)")
    parser.add_argument("--num_workers", type=int,
                        help=f"audio decoding workers of '{BATCHED}' extraction (default: dataset_conf.num_workers)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--save_threshold", action="store_true",
                        help="embed through MVectorPredictor (the path users call) and store the EER "
                             "threshold, EER and MinDCF in the model's model.state")
    parser.add_argument("--backend", help=f"how to embed a trial list: through MVectorPredictor with this inference "
                                           f"backend ({', '.join(BACKEND_NAMES)}), e.g. to check an exported or int8 "
                                           f"graph, or '{BATCHED}' (padded torch batches from a data loader, the "
                                           "path of --as_norm_cohort and --enroll_list). Default: auto (the "
                                           "fastest path, what MVectorPredictor() uses) for a trial list, "
                                           f"{BATCHED} for AS-Norm and enrol x test lists")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = vars(parse_args(argv))
    log_to_stderr(logging.WARNING)  # unusable audio files are reported on stderr; stdout has the result alone
    return run_cli(evaluate, progress=not args.pop("no_progress"), fallback_trials=SHARED_DEV_TRIALS, **args)


if __name__ == "__main__":
    sys.exit(main())
