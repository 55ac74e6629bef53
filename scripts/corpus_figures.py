"""EER and MinDCF of models on a trial list, overall and per corpus, through MVectorPredictor (the path
users call): the README's and model cards' results tables.

    python scripts/corpus_figures.py --model_dir mvector/pretrained/CAMPPlus_3DSpeaker [--model_dir ...]

A trial belongs to a corpus when both its files lie in that corpus's folder (the first folder of
their path relative to the trial list); cross-corpus trials count only in the overall row.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from mvector.inference.threshold import predictor_embeddings
from mvector.lists import read_trials
from mvector.metrics import pair_scores, verification_metrics
from mvector.inference.predictor import MVectorPredictor


ROOT = Path(__file__).resolve().parents[1]

def corpus_of(path: str, root: Path) -> str:
    return Path(path).resolve().relative_to(root).parts[0]


def figures(model_dir, trials: Path, window_seconds=None) -> list:
    """``[(row name, number of trials, metrics)]``: all trials, then each corpus."""
    paths1, paths2, labels = read_trials(trials)
    with MVectorPredictor(model_dir=model_dir, threshold=0.5, window_seconds=window_seconds,
                          hop_seconds=None if window_seconds is None else window_seconds / 2) as predictor:
        embeddings = predictor_embeddings(predictor, paths1 + paths2)
    scores = pair_scores(np.stack([embeddings[p] for p in paths1]), np.stack([embeddings[p] for p in paths2]))
    root = trials.resolve().parent
    first = np.array([corpus_of(p, root) for p in paths1])
    second = np.array([corpus_of(p, root) for p in paths2])
    rows = [("all", len(labels), verification_metrics(scores, labels))]
    for corpus in sorted(set(first) & set(second)):
        inside = (first == corpus) & (second == corpus)
        if labels[inside].any() and (~labels[inside]).any():
            rows.append((corpus, int(inside.sum()), verification_metrics(scores[inside], labels[inside])))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", action="append", required=True, help="model directory (repeatable)")
    parser.add_argument("--trials", default=str(ROOT.parent / "shared" / "data" / "dev" / "trials.tsv"))
    parser.add_argument("--window_seconds", type=float, help="embedding windows (default: each model's own)")
    args = parser.parse_args(argv)
    print("| model | subset | trials | EER | MinDCF (0.01) | threshold at FAR 0.1 % |")
    print("|---|---|---|---|---|---|")
    for model_dir in args.model_dir:
        for name, count, result in figures(model_dir, Path(args.trials), args.window_seconds):
            far = result["operating_points"]["far=0.001"]["threshold"]
            print(f"| {Path(model_dir).name} | {name} | {count} | {result['eer']:.2%} | {result['min_dcf']:.3f} | "
                  f"{far:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
