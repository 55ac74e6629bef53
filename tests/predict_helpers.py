"""A tiny model directory with random weights for the predictor, export, CLI, recognition-app and microphone tests."""
import io
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from mvector.config import load_config
from mvector.embedder import build_embedder
from mvector.model_dir import save_model_dir

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE_RATE = 16000
SMALL_MODEL = ["model_conf.model_args.channels=64", "model_conf.model_args.embd_dim=32",
               "preprocess_conf.method_args.num_mel_bins=40"]


def coloured_noise(seconds, seed, sample_rate=SAMPLE_RATE):
    """Noise with a random spectral tilt and a few formant-like peaks: inputs that differ audibly."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sample_rate)
    shape = (1 + freqs / 500) ** -rng.uniform(0.2, 1.5)
    for centre in rng.uniform(200, 4000, 3):
        shape = shape + 2 * np.exp(-0.5 * ((freqs - centre) / 150) ** 2)
    wav = np.fft.irfft(spectrum * shape, n)
    return (0.1 * wav / np.abs(wav).max()).astype(np.float32)


def fit_batchnorm_to_noise(embedder):
    """``embedder`` in eval mode with its BatchNorm statistics fitted to varied noise: untouched
    statistics give every input nearly the same embedding (cosines within 1e-5 of each other)."""
    for module in embedder.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.momentum = None  # cumulative average over the calibration batch
    with torch.no_grad():
        embedder.train()(torch.from_numpy(np.stack([coloured_noise(1.0, seed) for seed in range(100, 116)])))
    return embedder.eval()


def make_model_dir(path, state=None, seed=0):
    """Random TDNN weights whose BatchNorm statistics are fitted to varied noise (so embeddings of
    different inputs differ clearly, unlike with untouched statistics), saved as a model directory."""
    config = load_config(ROOT / "configs" / "tdnn.yml", overrides=SMALL_MODEL)
    torch.manual_seed(seed)
    embedder = fit_batchnorm_to_noise(build_embedder(config))
    weights = {"backbone." + k: v for k, v in embedder.backbone.state_dict().items()}
    path = save_model_dir(path, weights, config, {"threshold": 0.5} if state is None else state)
    # Its first use converts it for OpenVINO, once, with one log line: done here, so what the tests
    # check is the scripts' own output (tests/test_default_backend.py checks the conversion itself).
    from mvector.inference.predictor import MVectorPredictor

    MVectorPredictor(path)
    return path


def dev_by_speaker():
    """``{speaker: [Path, ...]}`` of the dev set, in list order (for tests marked ``data``)."""
    from mvector.lists import read_speaker_list

    by_speaker = {}
    for path, speaker in read_speaker_list(DATA / "dev" / "list.tsv"):
        by_speaker.setdefault(speaker, []).append(Path(path))
    return by_speaker


def dev_files(count):
    """``count`` real recordings from the dev set (different speakers first), or skip."""
    return [str(p) for group in zip(*dev_by_speaker().values()) for p in group][:count]


def write_wav(path, wav, sample_rate=SAMPLE_RATE, subtype="PCM_16"):
    sf.write(str(path), wav, sample_rate, subtype=subtype)
    return str(path)


def bad_audio_files(folder):
    """One file of each kind of unusable audio: ``{kind: (path, words the error must contain)}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4)
    nan = coloured_noise(1.0, seed=7)
    nan[100:200] = np.nan
    return {
        "missing": (str(folder / "missing.wav"), "not found"),
        "empty": (str(folder / "empty.wav"), "is empty (0 bytes)"),
        "corrupt": (str(folder / "corrupt.wav"), "not a readable audio file"),
        "silent": (write_wav(folder / "silent.wav", np.zeros(SAMPLE_RATE, dtype=np.float32)), "silent"),
        "too_short": (write_wav(folder / "short.wav", coloured_noise(0.1, seed=8)), "too short"),
        "nan": (write_wav(folder / "nan.wav", nan, subtype="FLOAT"), "NaN"),
    }


def live_webm(seconds: float) -> bytes:
    """Opus silence in WebM written as a live stream: no duration anywhere in the container."""
    out = io.BytesIO()
    import av

    with av.open(out, "w", format="webm", options={"live": "1"}) as container:
        stream = container.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        for i in range(int(seconds * 50)):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), dtype=np.float32), format="flt", layout="mono")
            frame.sample_rate, frame.pts = 48000, i * 960
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()
