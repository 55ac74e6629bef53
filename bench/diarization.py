"""Speaker diarization against senko 0.2.2 (the peer), on the same recordings in one run.

    python bench/diarization.py --peer-python /work/senko_venv/bin/python [--threads 2] [--conversations 20]

Sets: the 14 AMI meeting excerpts (``../shared/data/diarization/ami``), their report files
(dev00-01, tst00-01), and ``--conversations`` conversations simulated from the dev speakers with
the default settings (``simulate_conversations.py``, seed 0). Neither system is told the number of
speakers. One figure per line, the value last: ``<set> <system> <metric> <value>``:
  DER / DER_no_overlap   pooled, ±0.25 s collar, each recording scored over its whole length
  rtf                    wall seconds per second of audio (model loading and a warm-up excluded)
  ratio_vs_peer          ours / senko's, for each of the three (below 1 is better for DER; the
                         target for rtf is at most 2)
  hour peak_rss_mb / seconds   ours alone on one hour of meeting audio (the AMI excerpts looped), in
                         a fresh interpreter: its peak resident size (target under 1.5 GB) and time
The peer runs in a venv of its own (bench/README.md), by ``bench/peer_diarize.py``.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AMI = ROOT.parent / "shared" / "data" / "diarization" / "ami"
DEV_LIST = ROOT.parent / "shared" / "data" / "dev" / "list.tsv"
REPORT_FILES = ("dev00", "dev01", "tst00", "tst01")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-python", default=None, help="the senko venv's interpreter (omit: ours only)")
    parser.add_argument("--threads", type=int, default=2, help="threads for each system")
    parser.add_argument("--conversations", type=int, default=20, help="simulated conversations (0: none)")
    parser.add_argument("--no-hour", action="store_true", help="skip the one-hour memory run")
    return parser.parse_args()


def ours(recordings: dict, threads: int):
    """``({uri: segments}, rtf)`` of the default model and settings, warm-up excluded."""
    import torch

    from peer import default_predictor

    torch.set_num_threads(threads)
    predictor = default_predictor(threads=threads)
    predictor.diarize(next(iter(recordings.values())))
    started = time.perf_counter()
    hypotheses = {uri: predictor.diarize(path) for uri, path in recordings.items()}
    return hypotheses, time.perf_counter() - started


def peer(python, recordings: dict, threads: int, folder):
    from peer import run_peer_command

    from mvector.inference.diarization.rttm import read_rttm

    out = Path(folder) / "peer.rttm"
    script = ROOT / "bench" / "peer_diarize.py"
    result = run_peer_command([python, "-I", str(script), "--out", str(out), "--threads", str(threads),
                               *map(str, recordings.values())], folder)
    if "error" in result:
        return None, result["error"]
    found = read_rttm(out) if out.stat().st_size else {}
    return {uri: found.get(uri, []) for uri in recordings}, result["seconds"]


def report(name, references, recordings, systems):
    from peer import figure

    from mvector.apps.diarization import score_diarization
    from mvector.audio import audio_duration

    durations = {uri: audio_duration(recordings[uri]) for uri in references}
    audio_seconds = sum(durations.values())
    scores = {}
    for system, (hypotheses, seconds) in systems.items():
        pooled = score_diarization(references, {u: hypotheses[u] for u in references}, durations)["pooled"]
        scores[system] = {"DER": pooled["der"], "DER_no_overlap": pooled["der_no_overlap"],
                          "rtf": None if seconds is None else seconds / audio_seconds}
        for metric, value in scores[system].items():
            if value is not None:
                figure(name, system, metric, f"{value:.4f}")
    if len(scores) == 2:
        for metric in ("DER", "DER_no_overlap", "rtf"):
            if scores["mvector"][metric] is not None and scores["senko"][metric]:
                figure(name, "mvector", f"{metric}_ratio_vs_peer", f"{scores['mvector'][metric] / scores['senko'][metric]:.3f}")


def run_set(name, folder, references, args, subsets=None):
    from mvector.apps.diarization import find_recordings

    recordings = find_recordings(folder, sorted(references))
    systems = {"mvector": ours(recordings, args.threads)}
    if args.peer_python:
        with tempfile.TemporaryDirectory() as scratch:
            hypotheses, seconds = peer(args.peer_python, recordings, args.threads, scratch)
        if hypotheses is None:
            print(f"{name}: the peer did not run: {seconds}", file=sys.stderr)
        else:
            systems["senko"] = (hypotheses, seconds)
    report(name, references, recordings, systems)
    for subset, uris in (subsets or {}).items():  # speed is only measured over a whole set
        report(subset, {u: references[u] for u in uris}, recordings,
               {system: (hypotheses, None) for system, (hypotheses, _) in systems.items()})


HOUR_CHILD = """
import resource, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
from mvector import MVectorPredictor
predictor = MVectorPredictor(audio_db_path=None)
started = time.perf_counter()
segments = predictor.diarize(sys.argv[1])
print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, len(segments))
"""


def hour(threads: int):
    """One hour of meeting audio diarized by a fresh interpreter: its peak RSS and seconds."""
    import subprocess

    import numpy as np
    import soundfile as sf
    from peer import figure

    excerpts = np.concatenate([sf.read(p, dtype="float32")[0] for p in sorted(AMI.glob("*.flac"))])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "hour.wav"
        sf.write(path, np.resize(excerpts, 3600 * 16000), 16000, subtype="PCM_16")
        del excerpts
        done = subprocess.run([sys.executable, "-c", HOUR_CHILD, str(path), str(threads)], capture_output=True,
                              text=True, cwd=ROOT)
    if done.returncode:
        print(f"hour: failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return
    seconds, peak, _ = done.stdout.split()
    figure("hour", "mvector", "seconds", f"{float(seconds):.1f}")
    figure("hour", "mvector", "peak_rss_mb", f"{float(peak):.0f}")


def main():
    args = parse_args()
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(args.threads)
    sys.path.insert(0, str(ROOT / "bench"))
    from mvector.apps.conversations import simulate_conversations
    from mvector.inference.diarization.rttm import read_rttm

    if not AMI.is_dir():
        sys.exit(f"the AMI excerpts are not at {AMI}")
    references = read_rttm(AMI / "reference.rttm")
    run_set("ami", AMI, references, args, {"ami-report": [u for u in references if u.startswith(REPORT_FILES)]})
    if args.conversations:
        with tempfile.TemporaryDirectory() as folder:
            simulate_conversations(DEV_LIST, folder, n=args.conversations, seed=0, progress=False)
            run_set("conversations", folder, read_rttm(Path(folder) / "reference.rttm"), args)
    if not args.no_hour:
        hour(args.threads)


if __name__ == "__main__":
    main()
