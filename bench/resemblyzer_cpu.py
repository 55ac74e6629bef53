"""Benchmark: CPU speed of Resemblyzer's pretrained encoder against the packaged default model.

    python bench/resemblyzer_cpu.py --resemblyzer-python /work/resemblyzer_venv/bin/python
                                    [--repeats 5] [--threads 2]

The voice-like workload of bench/infer_cpu.py (one 3 s utterance, 16 of them, one 10 s one) through
each side's user-facing path, on ``--threads`` threads: ours ``MVectorPredictor(model=...)``
``predict`` / ``predict_batch`` with the torch backend and with the default one, Resemblyzer's
``preprocess_wav`` + ``embed_utterance`` (bench/peer_resemblyzer.py, run by the interpreter of a
venv holding Resemblyzer; recipe in bench/README.md). One figure per line, the value last:
``<model> <path> <shape> xRT <value>`` and ``<model> <path> <shape> ratio_vs_resemblyzer <value>``.
"""
import argparse
import sys
from pathlib import Path

import torch

from infer_cpu import SAMPLE_RATE, SHAPES, make_workload, time_path
from mvector.inference.predictor import MVectorPredictor
from mvector.pretrained import pretrained_model_dir
from peer import default_predictor, figure, run_peer_on_workload

PEER_SCRIPT = Path(__file__).resolve().parent / "peer_resemblyzer.py"


def our_xrt(predictor, workload, repeats) -> dict:
    return {shape: sum(len(w) for w in workload[shape]) / SAMPLE_RATE / seconds
            for shape, (seconds, _) in time_path(predictor, workload, repeats).items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resemblyzer-python", required=True, help="interpreter of a venv with resemblyzer")
    parser.add_argument("--model", default="default", help="our packaged model to compare (default: default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workload = make_workload()
    ours = {"torch": our_xrt(MVectorPredictor(model=args.model, backend="torch", audio_db_path=None), workload,
                             args.repeats)}
    ours["default"] = our_xrt(default_predictor(pretrained_model_dir(args.model), args.threads), workload,
                              args.repeats)
    peer = run_peer_on_workload(args.resemblyzer_python, PEER_SCRIPT, workload, args.repeats, args.threads)
    for path, by_shape in ours.items():
        for shape, xrt in by_shape.items():
            figure(args.model, path, shape, "xRT", f"{xrt:.1f}")
    if "error" in peer:
        print(f"note: no Resemblyzer figures: {peer['error']}", file=sys.stderr)
        return 1
    for shape in SHAPES:
        peer_xrt = peer[shape]["audio_seconds"] / peer[shape]["seconds"]
        figure("Resemblyzer", "pretrained", shape, "xRT", f"{peer_xrt:.1f}")
        for path, by_shape in ours.items():
            figure(args.model, path, shape, "ratio_vs_resemblyzer", f"{by_shape[shape] / peer_xrt:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
