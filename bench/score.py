"""Benchmark: score 4 M trials (2000 enrolled speakers x 2000 test utterances, 192-d) and compute
EER and MinDCF (p_target 0.01 and 0.05), the work an evaluation does after the embeddings.

    python bench/score.py [--repeats 5] [--peer-python /path/to/peer-venv/bin/python]

Prints one figure per line, ``name value unit``; times are the median of ``--repeats`` runs.
``--peer-python`` runs the same workload the way the reference toolkit (PyPI ``mvector==1.1.7``)
does in its trainer's evaluate(): a loop over test utterances with sklearn's cosine_similarity,
then its ``mvector.metric.metrics`` compute_fnr_fpr / compute_eer / compute_dcf.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


from mvector.metrics import cosine_score_matrix, verification_metrics

from peer import run_peer_command

NUM_ENROLL = 2000
NUM_TEST = 2000
DIM = 192
# Test embedding = its speaker's enrol embedding + this much Gaussian noise per dimension: an EER
# of a few per cent, like a real system's, rather than a trivially separable 0.
NOISE = 3.5

# Run by the peer interpreter in isolated mode (-I) from a temporary folder, so that `mvector` is
# the reference toolkit installed there, never this checkout.
PEER_SCRIPT = r"""
import json, statistics, sys, time
import numpy as np
try:
    from sklearn.metrics.pairwise import cosine_similarity
    from mvector.metric.metrics import compute_dcf, compute_eer, compute_fnr_fpr
except Exception as exc:
    print(json.dumps({"error": f"cannot import the reference toolkit's metrics: {type(exc).__name__}: {exc}"}))
    sys.exit(0)
data = np.load(sys.argv[1])
enroll, test = data["enroll"], data["test"]
enroll_labels, test_labels = data["enroll_labels"], data["test_labels"]
score_times, metric_times = [], []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    # The reference trainer's evaluate(): one test utterance against all enrolled ones per step.
    all_score, all_labels = [], []
    for i in range(len(test)):
        feature = np.expand_dims(test[i], 0)
        score = cosine_similarity(feature, enroll).astype(np.float32).tolist()[0]
        label = np.expand_dims(test_labels[i], 0).repeat(len(enroll), axis=0)
        all_score.extend(score)
        all_labels.extend(np.array(enroll_labels == label).astype(np.int32).tolist())
    all_score = np.array(all_score, dtype=np.float32)
    all_labels = np.array(all_labels, dtype=np.int32)
    scored = time.perf_counter()
    fnr, fpr, _ = compute_fnr_fpr(all_score, all_labels)
    eer, threshold = compute_eer(fnr, fpr, all_score)
    min_dcf, min_dcf_05 = compute_dcf(fnr, fpr, 0.01), compute_dcf(fnr, fpr, 0.05)
    done = time.perf_counter()
    score_times.append(scored - start)
    metric_times.append(done - scored)
print(json.dumps({"score_s": statistics.median(score_times), "metrics_s": statistics.median(metric_times),
                  "eer": float(eer), "min_dcf": float(min_dcf), "min_dcf_05": float(min_dcf_05)}))
"""


def make_workload(seed=0):
    rng = np.random.default_rng(seed)
    enroll = rng.standard_normal((NUM_ENROLL, DIM)).astype(np.float32)
    test_labels = rng.integers(0, NUM_ENROLL, NUM_TEST)
    test = enroll[test_labels] + NOISE * rng.standard_normal((NUM_TEST, DIM)).astype(np.float32)
    return enroll, test, np.arange(NUM_ENROLL), test_labels


def run_ours(enroll, test, enroll_labels, test_labels):
    start = time.perf_counter()
    scores = cosine_score_matrix(enroll, test)
    labels = enroll_labels[:, None] == test_labels[None, :]
    scored = time.perf_counter()
    metrics = verification_metrics(scores, labels)
    return scored - start, time.perf_counter() - scored, metrics


def run_peer(peer_python, workload, repeats):
    """The peer's figures as a dict, or a dict with 'error' saying why there are none."""
    if not Path(peer_python).is_file():
        return {"error": f"peer interpreter not found: {peer_python}"}
    enroll, test, enroll_labels, test_labels = workload
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "workload.npz"
        np.savez(data, enroll=enroll, test=test, enroll_labels=enroll_labels, test_labels=test_labels)
        return run_peer_command([peer_python, "-I", "-c", PEER_SCRIPT, str(data), str(repeats)], folder)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peer-python", help="interpreter of a venv with the reference toolkit (mvector==1.1.7)")
    args = parser.parse_args()

    workload = make_workload()
    runs = [run_ours(*workload) for _ in range(args.repeats)]
    score_s = statistics.median(r[0] for r in runs)
    metrics_s = statistics.median(r[1] for r in runs)
    total_s = statistics.median(r[0] + r[1] for r in runs)
    metrics = runs[-1][2]
    trials = f"{NUM_ENROLL * NUM_TEST / 1e6:g}M"
    print(f"score_{trials}_trials {score_s:.4f} s")
    print(f"metrics_{trials}_trials {metrics_s:.4f} s")
    print(f"score_and_metrics_{trials}_trials {total_s:.4f} s")
    print(f"eer {metrics['eer']:.6f} fraction")
    print(f"min_dcf {metrics['min_dcf']:.6f} cost")
    print(f"min_dcf_05 {metrics['min_dcf_05']:.6f} cost")
    if not args.peer_python:
        return
    peer = run_peer(args.peer_python, workload, args.repeats)
    if "error" in peer:
        print(f"note: no peer figures: {peer['error']}", file=sys.stderr)
        return
    peer_total = peer["score_s"] + peer["metrics_s"]
    print(f"peer_score_{trials}_trials {peer['score_s']:.4f} s")
    print(f"peer_metrics_{trials}_trials {peer['metrics_s']:.4f} s")
    print(f"peer_score_and_metrics_{trials}_trials {peer_total:.4f} s")
    print(f"speedup_vs_peer {peer_total / total_s:.1f} x")
    print(f"eer_diff_vs_peer {abs(peer['eer'] - metrics['eer']):.2e} fraction")
    print(f"min_dcf_diff_vs_peer {abs(peer['min_dcf'] - metrics['min_dcf']):.2e} cost")


if __name__ == "__main__":
    main()
