"""Evaluate a speaker-embedding model: EER and MinDCF on a trial list or on enrol x test lists.

    python eval.py --model_dir models/CAMPPlus_Fbank/best_model
    python eval.py --configs configs/cam++.yml --model_dir DIR --enroll_list E --trials_list T

The model directory carries its own config; ``--configs`` only supplies dataset list paths. The last
line printed is ``EER: <fraction> MinDCF: <p=0.01> MinDCF@0.05: <p=0.05> threshold: <score>``.
"""
import argparse
import importlib
import logging
import sys
from pathlib import Path

from mvector.apps.cli import BACKEND_NAMES
from mvector.errors import MVectorError

# Used when the configured trial list has not been created: the shared dev set beside the checkout.
SHARED_DEV_TRIALS = Path(__file__).resolve().parent.parent / "shared" / "data" / "dev" / "trials.tsv"
# The dataset_conf keys --configs may set; the rest of the config belongs to the trained model.
DATASET_PATH_KEYS = ("train_list", "enroll_list", "trials_list", "trials")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", help="YAML config whose dataset list paths to use")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model_dir", help="model directory (default: the shipped pretrained model)")
    which.add_argument("--model", help="a packaged model by name, e.g. default or small")
    parser.add_argument("--trials", help="trial list path1<TAB>path2<TAB>1|0 (default: dataset_conf.trials)")
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
    parser.add_argument("--use_gpu", action="store_true", help="run the model on CUDA")
    parser.add_argument("--batch_size", type=int, help="utterances per batch (default: dataset_conf.eval_batch_size)")
    parser.add_argument("--num_workers", type=int, help="audio decoding workers (default: dataset_conf.num_workers)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--save_threshold", action="store_true",
                        help="embed through MVectorPredictor (the path users call) and store the EER "
                             "threshold, EER and MinDCF in the model's model.state")
    parser.add_argument("--backend", help=f"embed through MVectorPredictor with this inference backend "
                                           f"({', '.join(BACKEND_NAMES)}) instead of batched extraction, e.g. "
                                           "to check an exported or int8 graph on the trials")
    return parser.parse_args(argv)


def default_model_dir(name=None) -> Path:
    try:
        pretrained = importlib.import_module("mvector.pretrained")
    except ModuleNotFoundError as exc:
        if exc.name not in ("mvector.pretrained", "mvector"):
            raise
        raise MVectorError("no --model_dir given and no pretrained model is shipped") from None
    try:
        return Path(pretrained.pretrained_model_dir(name))
    except MVectorError as exc:
        raise MVectorError(f"--model: {exc}" if name else f"no --model_dir given and {exc}") from None


def resolve_device(use_gpu: bool) -> str:
    import torch

    if not use_gpu:
        return "cpu"
    if not torch.cuda.is_available():
        raise MVectorError("--use_gpu given but no CUDA device is available")
    return "cuda"


def default_trials(config) -> Path:
    configured = config["dataset_conf"]["trials"]
    if configured and Path(configured).is_file():
        return Path(configured)
    if SHARED_DEV_TRIALS.is_file():
        return SHARED_DEV_TRIALS
    raise MVectorError(f"no --trials given and neither dataset_conf.trials ({configured}) "
                       f"nor {SHARED_DEV_TRIALS} exists")


def embedding_windows(args, config) -> dict:
    """The windows to embed with: the options, else the model config's; checked like the config's."""
    data = config["dataset_conf"]
    window = data["embed_window"] if args.window_seconds is None else args.window_seconds
    if args.hop_seconds is not None:
        hop = args.hop_seconds
    else:
        hop = data["embed_hop"] if args.window_seconds is None else window / 2
    if not window > 0:
        raise MVectorError(f"--window_seconds must be > 0, got {window}")
    if not 0 < hop <= window:
        raise MVectorError(f"--hop_seconds must be in (0, window={window}], got {hop}")
    return {"window_seconds": window, "hop_seconds": hop}


def run(args) -> dict:
    from mvector.config import load_config
    from mvector.evaluation import cohort_embeddings, evaluate_cross, evaluate_trials
    from mvector.model_dir import load_embedder

    if bool(args.enroll_list) != bool(args.trials_list):
        raise MVectorError("--enroll_list and --trials_list go together: give both or neither")
    if args.trials and args.enroll_list:
        raise MVectorError("give either --trials or --enroll_list/--trials_list, not both")
    model_dir = Path(args.model_dir) if args.model_dir else default_model_dir(args.model)
    if not model_dir.is_dir():
        raise MVectorError(f"model directory not found: {model_dir}")
    device = resolve_device(args.use_gpu)
    embedder, config, _ = load_embedder(model_dir, device)
    if args.configs:
        dataset = load_config(args.configs)["dataset_conf"]
        config["dataset_conf"].update({key: dataset[key] for key in DATASET_PATH_KEYS})
    windows = embedding_windows(args, config)
    config["dataset_conf"].update(embed_window=windows["window_seconds"], embed_hop=windows["hop_seconds"])

    options = dict(batch_size=args.batch_size, num_workers=args.num_workers, progress=not args.no_progress)
    cohort = None
    if args.as_norm_cohort:
        cohort = cohort_embeddings(embedder, args.as_norm_cohort, config, device, **options)
    scoring = dict(cohort=cohort, top_k=args.as_norm_top_k, det_plot_path=args.det_plot, **options)
    if args.enroll_list:
        return evaluate_cross(embedder, args.enroll_list, args.trials_list, config, device, **scoring)
    trials = Path(args.trials) if args.trials else default_trials(config)
    if args.save_threshold or args.backend:
        from mvector.inference.threshold import calibrate, predictor_trials

        if cohort is not None:
            raise MVectorError("--save_threshold and --backend score raw cosines: drop --as_norm_cohort")
        if args.save_threshold and args.backend not in (None, "torch"):
            raise MVectorError("--save_threshold measures the threshold through the torch backend: drop --backend")
        if args.save_threshold:
            if args.window_seconds is not None or args.hop_seconds is not None:
                raise MVectorError("--save_threshold measures the threshold with the windows the model's "
                                   "predictor uses (its config's): drop --window_seconds / --hop_seconds")
            return calibrate(model_dir, trials, progress=not args.no_progress, use_gpu=args.use_gpu)
        return predictor_trials(model_dir, trials, progress=not args.no_progress, use_gpu=args.use_gpu,
                                backend=args.backend, **windows)
    return evaluate_trials(embedder, trials, config, device, **scoring)


def main(argv=None) -> int:
    args = parse_args(argv)
    # Warnings (unusable audio files) go to stderr; stdout carries the result alone.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    try:
        result = run(args)
    except MVectorError as exc:
        print(f"eval.py: error: {exc}", file=sys.stderr)
        return 1
    print(f"EER: {result['eer']:.6f} MinDCF: {result['min_dcf']:.6f} "
          f"MinDCF@0.05: {result['min_dcf_05']:.6f} threshold: {result['threshold']:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
