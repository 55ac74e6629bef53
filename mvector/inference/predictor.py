"""Speaker embeddings, verification and a voiceprint library from a trained model directory.

    predictor = MVectorPredictor(model_dir="models/CAMPPlus_Fbank/best_model")
    same, score = predictor.verify("a.wav", "b.flac")
    predictor.register("alice.wav", "alice"); name, score = predictor.recognition("unknown.wav")

Audio is anything ``mvector.audio.load_audio`` accepts, loaded with the model config's loudness
normalisation and VAD settings. Recordings longer than the model's window
(``dataset_conf.embed_window``) are embedded as overlapping windows whose embeddings are averaged,
as evaluation embeds them, so memory stays bounded for any length.
"""
import hashlib
import warnings
from pathlib import Path

import numpy as np

from mvector.audio import DEFAULT_MAX_DURATION, load_audio
from mvector.audio.spec import AudioSpec
from mvector.device import wants_gpu
from mvector.embedder import window_starts
from mvector.errors import ConfigError, MVectorError
from mvector.inference.backends import BACKENDS
from mvector.inference.contract import MIN_DURATION


# Used only when the model's model.state has no EER threshold (e.g. a model never evaluated):
# a cosine this high is a same-speaker decision for the recipes' AAM-trained models.
DEFAULT_THRESHOLD = 0.5
# Windows of a long recording embedded per forward pass: bounds its peak memory (16 ten-second
# windows hold about 0.6 GB of CAM++ activations, 4 a quarter of that) at no cost in speed, since
# equal-length windows need no padding masks.
WINDOWS_PER_PASS = 4


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)
    return (embeddings / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _check_threshold(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= value <= 1.0:
        raise ConfigError(f"threshold must be a cosine similarity in [-1, 1], got {value!r}")
    return float(value)


def operating_point_thresholds(state: dict) -> dict:
    """``name -> cosine threshold`` of the operating points a model ships (``eer``, ``far=0.01``, ...)."""
    points = {name: point["threshold"] for name, point in state.get("operating_points", {}).items()}
    if "eer" not in points and state.get("threshold") is not None:
        points["eer"] = state["threshold"]
    return points


def resolve_threshold(value, state: dict) -> float:
    """A cosine threshold from a number (or a numeric string, as a command line gives it), or from the
    name of one of the model's operating points: 'eer', or 'far=<rate>' for a false-accept rate it
    ships (e.g. 'far=0.001'), measured on its calibration trials."""
    if not isinstance(value, str):
        return _check_threshold(value)
    text = value.strip().lower()
    try:
        return _check_threshold(float(text))
    except ValueError:
        pass
    points = operating_point_thresholds(state)
    name = text
    if text.startswith("far="):
        try:
            name = f"far={float(text[4:].rstrip('%')) / (100 if text.endswith('%') else 1):g}"
        except ValueError:
            name = text
    if name not in points:
        shipped = ", ".join(sorted(points)) or "none (the model was never calibrated)"
        raise ConfigError(f"threshold {value!r} is neither a cosine in [-1, 1] nor an operating point of this "
                          f"model; its operating points: {shipped}")
    return _check_threshold(points[name])


def _chunks(items, size):
    return (items[i: i + size] for i in range(0, len(items), size))


class MVectorPredictor:
    """Embeddings (``predict``), comparisons (``contrast``/``verify``) and a voiceprint library.

    ``model_dir``: a model directory (``mvector.model_dir``); None uses the packaged model ``model``
    (``mvector.pretrained.PRETRAINED_MODELS``: 'default' or 'small', ...).
    ``threshold``: the same-speaker decision threshold: a cosine, or one of the operating points
    measured on the model's calibration trials and stored in its model.state: 'eer' (the default),
    'far=0.01' or 'far=0.001' (at most that false-accept rate). ``use_gpu``: run on CUDA (an error
    when there is none; 'auto': when there is one). ``window_seconds`` / ``hop_seconds``: sliding windows for long recordings (None: the model config's
    ``dataset_conf.embed_window`` / ``embed_hop``, with which its EER threshold was measured);
    ``batch_size``: utterances or windows per forward pass. ``backend``: 'torch', 'onnx' (an
    exported ``model.onnx``, found in ``model_dir`` or given as ``onnx_path``, run by ONNX
    Runtime), 'openvino' (the same file compiled by OpenVINO: the fastest float32 path on x86
    CPUs) or 'onnx-int8' / 'openvino-int8' (``model.int8.onnx``, ``mvector.inference.quantize``);
    'openvino-bf16': float32 features, then the backbone converted for OpenVINO and computed in
    bfloat16 (faster on CPUs with bfloat16 units, embeddings within cosine 0.999 of float32).
    ``fuse_batchnorm`` (torch backend): BatchNorms are folded into the convolutions before them at
    load, checked to give the same embeddings (5-25 % faster on the CPU for the backbones that have
    such pairs; ECAPA-TDNN has none). None (default): fold where that check passes; True: fold or
    fail; False: never.
    """

    def __init__(self, model_dir=None, audio_db_path="audio_db/", threshold=None, use_gpu=False,
                 window_seconds=None, hop_seconds=None, batch_size=16, *, backend=None, onnx_path=None,
                 fuse_batchnorm=None, model=None):
        if model_dir is None:
            from mvector.pretrained import pretrained_model_dir
            model_dir = pretrained_model_dir(model)
        elif model is not None:
            raise ConfigError(f"give model_dir or model, not both (model={model!r}, model_dir={str(model_dir)!r})")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(use_gpu, bool):  # 'auto', 'true' or 'false', the scripts' words
            use_gpu = wants_gpu(use_gpu)
        self.model_dir = Path(model_dir)
        if backend is None:  # the fastest path with the same embeddings, unless a torch-only option asks for torch
            backend = "torch" if fuse_batchnorm is not None or onnx_path is not None else "auto"
        extra = {} if onnx_path is None else {"onnx_path": onnx_path}
        if fuse_batchnorm is not None:
            if backend != "torch":
                raise ConfigError(f"fuse_batchnorm applies to the torch backend, not {backend!r}")
            extra["fuse_batchnorm"] = bool(fuse_batchnorm)
        self._backend = BACKENDS.build(backend, self.model_dir, use_gpu=use_gpu, where="MVectorPredictor: ", **extra)
        self.config = self._backend.config
        self.sample_rate = self._backend.sample_rate
        self.embd_dim = self._backend.embd_dim
        self.batch_size = batch_size
        self.audio_spec = AudioSpec.from_config(self.config)
        window_seconds = self.audio_spec.window_seconds if window_seconds is None else window_seconds
        hop_seconds = self.audio_spec.hop_seconds if hop_seconds is None else hop_seconds
        if not window_seconds >= MIN_DURATION:
            raise ConfigError(f"window_seconds must be >= {MIN_DURATION} s, got {window_seconds!r}")
        if not 0 < hop_seconds <= window_seconds:
            raise ConfigError(f"hop_seconds must be in (0, window_seconds={window_seconds}], got {hop_seconds!r}")
        self._window = self.audio_spec.samples(window_seconds)
        self._hop = self.audio_spec.samples(hop_seconds)
        self.threshold = self._model_threshold() if threshold is None else threshold
        self.audio_db_path = audio_db_path
        self._voiceprints = None

    def _model_threshold(self) -> float:
        stored = self._backend.state.get("threshold")
        if stored is None:
            warnings.warn(f"{self.model_dir}: model.state has no EER threshold; using DEFAULT_THRESHOLD "
                          f"{DEFAULT_THRESHOLD} (pass threshold= to choose one)", stacklevel=3)
            return DEFAULT_THRESHOLD
        return _check_threshold(stored)

    def resolve_threshold(self, value) -> float:
        """``value`` as a cosine threshold: None is this predictor's, a number itself, a name such as
        'far=0.001' the model's operating point (``resolve_threshold``)."""
        return self.threshold if value is None else resolve_threshold(value, self._backend.state)

    @property
    def operating_points(self) -> dict:
        """``name -> threshold`` of the operating points the model ships ('eer', 'far=0.01', ...)."""
        return operating_point_thresholds(self._backend.state)

    @property
    def threshold(self) -> float:
        """Cosine similarity at or above which two recordings are judged the same speaker."""
        return self._threshold

    @threshold.setter
    def threshold(self, value):
        self._threshold = resolve_threshold(value, self._backend.state)

    # ------------------------------------------------------------------ embeddings

    def load(self, audio, sample_rate=None, max_duration=DEFAULT_MAX_DURATION) -> np.ndarray:
        """``audio`` as the model hears it: mono float32 at its rate, normalised and VAD-trimmed as
        its config says; AudioError naming the input when unusable, shorter than MIN_DURATION or
        longer than ``max_duration`` seconds (decoding stops there)."""
        return load_audio(audio, sample_rate, min_duration=MIN_DURATION, max_duration=max_duration,
                          **self.audio_spec.load_options)

    def predict(self, audio, sample_rate=None) -> np.ndarray:
        """One L2-normalised float32 embedding ``[E]``."""
        return self.embed_waveforms([self.load(audio, sample_rate)])[0]

    def predict_batch(self, audios, sample_rate=None) -> np.ndarray:
        """L2-normalised embeddings ``[N, E]`` of several inputs (``sample_rate`` for any arrays)."""
        return self.embed_waveforms([self.load(audio, sample_rate) for audio in audios])

    def embed_waveforms(self, waveforms) -> np.ndarray:
        """L2-normalised embeddings ``[N, E]`` of loaded waveforms (float32 1-D arrays at the model's
        rate, as ``load`` returns them, each at least MIN_DURATION long).

        Recordings up to one window long are batched longest first, so each batch is padded to
        little more than its own lengths; longer ones go through ``_embed_long``.
        """
        embeddings = np.zeros((len(waveforms), self.embd_dim), dtype=np.float32)
        short = sorted((i for i, w in enumerate(waveforms) if len(w) <= self._window),
                       key=lambda i: -len(waveforms[i]))
        for chunk in _chunks(short, self.batch_size):
            embeddings[chunk] = self._forward([waveforms[i] for i in chunk])
        for i, wav in enumerate(waveforms):
            if len(wav) > self._window:
                embeddings[i] = self._embed_long(wav)
        return embeddings

    def _embed_long(self, wav: np.ndarray) -> np.ndarray:
        """Mean of the normalised embeddings of windows every hop (the last one flush with the end),
        renormalised. Windows are views into ``wav``, embedded a few at a time (WINDOWS_PER_PASS)."""
        starts = window_starts(len(wav), self._window, self._hop)
        total = np.zeros(self.embd_dim, dtype=np.float64)
        for chunk in _chunks(starts, min(self.batch_size, WINDOWS_PER_PASS)):
            total += self._forward([wav[s: s + self._window] for s in chunk]).sum(axis=0)
        return l2_normalize(total)

    def _forward(self, waveforms) -> np.ndarray:
        """One padded batch through the backend: L2-normalised ``[B, E]``."""
        lengths = np.array([len(w) for w in waveforms], dtype=np.int64)
        batch = np.zeros((len(waveforms), int(lengths.max())), dtype=np.float32)
        for row, wav in zip(batch, waveforms):
            row[: len(wav)] = wav
        embeddings = np.asarray(self._backend(batch, lengths), dtype=np.float32)
        if not np.isfinite(embeddings).all():
            raise MVectorError(f"{self.model_dir}: the model produced a non-finite embedding")
        return l2_normalize(embeddings)

    # ------------------------------------------------------------------ comparisons

    def contrast(self, audio1, audio2, sample_rate=None) -> float:
        """Cosine similarity of two recordings' embeddings, in [-1, 1]."""
        first, second = self.predict_batch([audio1, audio2], sample_rate)
        return float(np.clip(np.dot(first, second), -1.0, 1.0))

    def verify(self, audio1, audio2, sample_rate=None, threshold=None):
        """``(same_speaker, score)``: same speaker when the similarity reaches the threshold."""
        threshold = self.resolve_threshold(threshold)
        score = self.contrast(audio1, audio2, sample_rate)
        return score >= threshold, score

    # ------------------------------------------------------------------ voiceprint library

    def fingerprint(self) -> str:
        """Identifies the embedding space (model and windows): the voiceprint library re-embeds when
        it changes."""
        model = self._backend.fingerprint()
        spec = self.audio_spec
        configured = (spec.samples(spec.window_seconds), spec.samples(spec.hop_seconds))
        if (self._window, self._hop) == configured:
            return model
        return hashlib.sha256(f"{model} window={self._window} hop={self._hop}".encode()).hexdigest()[:16]

    def _library(self):
        if self._voiceprints is None:
            from mvector.library.stores import open_library
            self._voiceprints = open_library(self.audio_db_path, embed_fn=self.embed_waveforms,
                                             fingerprint=self.fingerprint(), sample_rate=self.sample_rate)
        return self._voiceprints

    def register(self, audio, user_name: str, sample_rate=None):
        """Add a recording of ``user_name`` to the voiceprint library."""
        wav = self.load(audio, sample_rate)
        return self._library().register(user_name, wav, self.embed_waveforms([wav])[0])

    def recognition(self, audio, threshold=None, sample_rate=None):
        """``(name, score)`` of the best-matching registered speaker; name is None below the threshold."""
        threshold = self.resolve_threshold(threshold)
        return self._library().recognition(self.predict(audio, sample_rate), threshold)

    def search(self, audio, top_k: int = 5, sample_rate=None):
        """The ``top_k`` most similar registered speakers as ``[(name, score)]``, best first."""
        return self._library().search(self.predict(audio, sample_rate), top_k)

    # ------------------------------------------------------------------ diarization

    def diarize(self, audio, num_speakers=None, min_speakers=1, max_speakers=None, name_speakers=False,
                timestamps=None, *, sample_rate=None, threshold=None, diarizer=None, progress=False,
                max_duration=DEFAULT_MAX_DURATION, library=None) -> list:
        """Who spoke when: time-ordered ``[Segment(start, end, speaker)]`` in seconds.

        The number of speakers is estimated unless ``num_speakers`` is given (or bounded by
        ``min_speakers`` / ``max_speakers``). Speakers are 'speaker-1', 'speaker-2', ... in order of
        first appearance; with ``name_speakers`` each is matched against the voiceprint library and
        takes the enrolled name whose score reaches ``threshold`` (default: the model's), else
        'unknown-1', 'unknown-2', ... ``timestamps``: ``[(start, end)]`` seconds of speech, which
        skips speech detection. ``diarizer``: a ``mvector.inference.diarization.Diarizer`` with other
        settings. Overlapping speech is given to one speaker.
        """
        from mvector.inference.diarization.pipeline import Diarizer, Segment  # scikit-learn and Silero only when used

        diarizer = Diarizer() if diarizer is None else diarizer
        wav = load_audio(audio, sample_rate, min_duration=MIN_DURATION, max_duration=max_duration,
                         target_sample_rate=self.sample_rate, normalize_db=self.audio_spec.target_db)
        spans, centroids = diarizer(self, wav, num_speakers=num_speakers, min_speakers=min_speakers,
                                    max_speakers=max_speakers, timestamps=timestamps, progress=progress,
                                    name=str(audio) if isinstance(audio, (str, Path)) else getattr(audio, "name", None))
        names = self._speaker_names(centroids, name_speakers, threshold, library)
        return [Segment(round(start, 3), round(end, 3), names[label]) for start, end, label in spans]

    def _speaker_names(self, centroids, name_speakers, threshold, library) -> list:
        """A name per cluster: its enrolled name when asked and its centroid passes the threshold."""
        if not name_speakers:
            return [f"speaker-{k + 1}" for k in range(len(centroids))]
        threshold = self.resolve_threshold(threshold)
        library = self._library() if library is None else library
        names, unknown = [], 0
        for centroid in centroids:
            name, _ = library.recognition(centroid, threshold)
            if name is None:
                unknown += 1
                name = f"unknown-{unknown}"
            names.append(name)
        return names

    def get_users(self):
        return self._library().get_users()

    def remove_user(self, user_name: str) -> bool:
        return self._library().remove_user(user_name)

    def close(self):
        if self._voiceprints is not None:
            self._voiceprints.close()
            self._voiceprints = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return (f"MVectorPredictor(model_dir={str(self.model_dir)!r}, backend={type(self._backend).__name__}, "
                f"sample_rate={self.sample_rate}, embd_dim={self.embd_dim}, threshold={self.threshold:.4f})")
