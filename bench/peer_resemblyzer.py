"""Resemblyzer's side of bench/resemblyzer_cpu.py: run by its own venv's interpreter, never by ours.

    RESEMBLYZER_PYTHON -I bench/peer_resemblyzer.py AUDIO.npz REPEATS THREADS

Loads Resemblyzer's pretrained ``VoiceEncoder("cpu")`` and times its user-facing path on the numpy
arrays of each shape in AUDIO.npz (keys ``<shape>__<index>``): ``preprocess_wav`` (loudness
normalisation and its VAD trimming) then ``embed_utterance``, one utterance at a time (it has no
batch call for separate utterances). Prints one JSON line last: ``{shape: {"seconds": median,
"audio_seconds": ...}}`` or ``{"error": ...}``.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # -I leaves the script's folder out
from peer_workload import median_seconds, read_workload  # noqa: E402

SAMPLE_RATE = 16000


def main():
    audio_path, repeats, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    try:
        import torch
        from resemblyzer import VoiceEncoder, preprocess_wav
    except Exception as exc:
        print(json.dumps({"error": f"cannot import Resemblyzer: {type(exc).__name__}: {exc}"}))
        return
    torch.set_num_threads(threads)
    encoder = VoiceEncoder("cpu", verbose=False)
    results = {}
    for shape, batch in read_workload(audio_path).items():

        def embed():
            return [encoder.embed_utterance(preprocess_wav(wav, source_sr=SAMPLE_RATE)) for wav in batch]

        embed()  # warm-up, as bench/infer_cpu.py does for every path
        results[shape] = {"seconds": median_seconds(embed, repeats),
                          "audio_seconds": sum(len(w) for w in batch) / SAMPLE_RATE}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
