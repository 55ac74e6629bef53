"""MVectorPredictor: embeddings, batching, sliding windows, thresholds, errors, voiceprint library."""
import io
import json
import re
import shutil
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from mvector.errors import AudioError, ConfigError, ModelMismatchError, MVectorError
from mvector.inference.predictor import DEFAULT_THRESHOLD, MIN_DURATION, MVectorPredictor, l2_normalize
from predict_helpers import SAMPLE_RATE, bad_audio_files, coloured_noise, dev_files, make_model_dir, write_wav

pytestmark = pytest.mark.integration

COS = 0.9999


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("model") / "m", state={"threshold": 0.37})


@pytest.fixture(scope="module")
def predictor(model_dir):
    return MVectorPredictor(model_dir)


def cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.data
def test_predict_gives_one_normalised_float32_embedding(predictor):
    embedding = predictor.predict(dev_files(1)[0])
    assert embedding.shape == (32,) and embedding.dtype == np.float32
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.data
def test_every_kind_of_source_gives_the_same_embedding(predictor):
    path = dev_files(1)[0]
    reference = predictor.predict(path)
    data = open(path, "rb").read()
    wav, rate = sf.read(path, dtype="float32")
    for source, rate_arg in [(data, None), (io.BytesIO(data), None), (wav, rate),
                             (torch.from_numpy(wav), rate), ((wav * 32767).astype(np.int16), rate)]:
        assert cosine(predictor.predict(source, sample_rate=rate_arg), reference) > COS


@pytest.mark.data
def test_predict_batch_equals_one_by_one_on_files_of_different_lengths(model_dir):
    files = dev_files(7)
    predictor = MVectorPredictor(model_dir, batch_size=3)  # several padded batches, not one
    batch = predictor.predict_batch(files)
    single = np.stack([predictor.predict(f) for f in files])
    assert batch.shape == (7, 32)
    for a, b in zip(batch, single):
        assert cosine(a, b) > COS
    # The check above would pass trivially if every embedding were the same.
    off_diagonal = (single @ single.T)[~np.eye(len(files), dtype=bool)]
    assert off_diagonal.max() < 0.999
    assert predictor.predict_batch([]).shape == (0, 32)


def test_dataset_loudness_normalisation_is_applied(predictor):
    wav = coloured_noise(2.0, seed=3)
    loaded = predictor.load(wav * 0.01, SAMPLE_RATE)
    rms_db = 20 * np.log10(np.sqrt(np.mean(loaded.astype(np.float64) ** 2)))
    assert rms_db == pytest.approx(predictor.config["dataset_conf"]["target_db"], abs=0.01)


class _RecordingBackend:
    """Wraps a backend and records the shape of each batch it is given."""

    def __init__(self, backend):
        self.backend, self.shapes = backend, []

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def __call__(self, waveforms, lengths):
        self.shapes.append(waveforms.shape)
        return self.backend(waveforms, lengths)


def test_long_recording_is_the_mean_of_its_window_embeddings(model_dir):
    predictor = MVectorPredictor(model_dir, window_seconds=10.0, hop_seconds=5.0, batch_size=4)
    long = np.concatenate([coloured_noise(6.0, seed=s) for s in range(10)])  # 60 s
    predictor._backend = recorder = _RecordingBackend(predictor._backend)
    embedding = predictor.embed_waveforms([long])[0]
    window, hop = 10 * SAMPLE_RATE, 5 * SAMPLE_RATE
    # Windows are embedded batch_size at a time, each exactly one window long: bounded memory.
    assert recorder.shapes == [(4, window), (4, window), (3, window)]
    assert np.isfinite(embedding).all() and np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)
    windows = [long[s: s + window] for s in range(0, len(long) - window + 1, hop)]
    expected = l2_normalize(predictor.embed_waveforms(windows).sum(axis=0))
    assert cosine(embedding, expected) > COS


def test_last_window_ends_flush_with_the_recording(model_dir):
    predictor = MVectorPredictor(model_dir, window_seconds=4.0, hop_seconds=3.0)
    wav = np.concatenate([coloured_noise(3.0, seed=s) for s in range(4)])  # 12 s: starts 0, 3, 6, 8
    window = 4 * SAMPLE_RATE
    starts = [0, 3 * SAMPLE_RATE, 6 * SAMPLE_RATE, len(wav) - window]
    expected = l2_normalize(predictor.embed_waveforms([wav[s: s + window] for s in starts]).sum(axis=0))
    assert cosine(predictor.embed_waveforms([wav])[0], expected) > COS


@pytest.mark.data
def test_a_real_long_concatenation_works_and_short_input_is_not_windowed(model_dir):
    predictor = MVectorPredictor(model_dir)
    unwindowed = MVectorPredictor(model_dir, window_seconds=1000.0, hop_seconds=1000.0)
    waves = [predictor.load(f) for f in dev_files(6)]
    long = np.concatenate(waves * 2)
    assert len(long) > 60 * SAMPLE_RATE
    embedding = predictor.predict(long, SAMPLE_RATE)
    assert np.isfinite(embedding).all() and np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)
    short = next(w for w in waves if len(w) < 10 * SAMPLE_RATE)
    np.testing.assert_allclose(predictor.embed_waveforms([short]), unwindowed.embed_waveforms([short]), atol=1e-6)


@pytest.mark.data
def test_windows_come_from_the_model_config_and_evaluation_embeds_alike(tmp_path):
    # The windows a model's EER threshold was measured with are the ones its predictor uses, and
    # eval.py's batched extraction gives the very embeddings the predictor gives.
    from mvector.evaluation import extract_embeddings
    from mvector.model_dir import load_embedder

    model_dir = make_model_dir(tmp_path / "m")
    config = yaml.safe_load((model_dir / "config.yml").read_text())
    config["dataset_conf"].update(embed_window=1.0, embed_hop=0.5)
    (model_dir / "config.yml").write_text(yaml.safe_dump(config))
    files = [str(f) for f in dev_files(3)]
    from_config = MVectorPredictor(model_dir).predict_batch(files)
    explicit = MVectorPredictor(model_dir, window_seconds=1.0, hop_seconds=0.5)
    np.testing.assert_allclose(from_config, explicit.predict_batch(files), atol=1e-6)
    unwindowed = MVectorPredictor(model_dir, window_seconds=1000.0, hop_seconds=1000.0).predict_batch(files)
    assert max(cosine(a, b) for a, b in zip(from_config, unwindowed)) < 0.999
    embedder, loaded, _ = load_embedder(model_dir)
    data = loaded["dataset_conf"]
    batched = extract_embeddings(embedder, files, batch_size=2, num_workers=0, progress=False,
                                 normalize_db=data["target_db"], window=1.0, hop=0.5)
    for path, expected in zip(files, from_config):
        assert cosine(batched[path], expected) > COS
    # Voiceprints enrolled with other windows are another embedding space.
    assert explicit.fingerprint() == MVectorPredictor(model_dir).fingerprint()
    assert MVectorPredictor(model_dir, window_seconds=2.0).fingerprint() != explicit.fingerprint()


@pytest.mark.data
def test_contrast_is_symmetric_and_verify_uses_the_model_threshold(predictor):
    a, b = dev_files(2)
    score = predictor.contrast(a, b)
    assert score == pytest.approx(predictor.contrast(b, a), abs=1e-6)
    assert score == pytest.approx(cosine(predictor.predict(a), predictor.predict(b)), abs=1e-5)
    assert predictor.contrast(a, a) == pytest.approx(1.0, abs=1e-5)
    assert predictor.threshold == 0.37  # model.state's EER threshold
    assert predictor.verify(a, b) == (score >= 0.37, pytest.approx(score, abs=1e-6))
    assert predictor.verify(a, b, threshold=score + 0.01)[0] is False
    assert predictor.verify(a, b, threshold=score - 0.01)[0] is True


def test_threshold_argument_overrides_and_a_missing_one_warns(tmp_path, model_dir):
    assert json.loads((model_dir / "model.state").read_text())["threshold"] == 0.37
    assert MVectorPredictor(model_dir, threshold=0.8).threshold == 0.8
    bare = shutil.copytree(model_dir, tmp_path / "bare")
    state = json.loads((bare / "model.state").read_text())
    del state["threshold"]
    (bare / "model.state").write_text(json.dumps(state))
    with pytest.warns(UserWarning, match="no EER threshold"):
        assert MVectorPredictor(bare).threshold == DEFAULT_THRESHOLD
    with pytest.raises(ConfigError, match="threshold"):
        MVectorPredictor(model_dir, threshold=1.5)


@pytest.mark.data
def test_operating_points_are_chosen_by_name(tmp_path, model_dir):
    calibrated = shutil.copytree(model_dir, tmp_path / "calibrated")
    state = json.loads((calibrated / "model.state").read_text())
    state["operating_points"] = {"eer": {"threshold": 0.37, "far": 0.05, "frr": 0.05},
                                 "far=0.01": {"threshold": 0.45, "far": 0.0099, "frr": 0.1},
                                 "far=0.001": {"threshold": 0.6, "far": 0.001, "frr": 0.3}}
    (calibrated / "model.state").write_text(json.dumps(state))
    predictor = MVectorPredictor(calibrated, threshold="far=0.001")
    assert predictor.threshold == 0.6
    assert predictor.operating_points == {"eer": 0.37, "far=0.01": 0.45, "far=0.001": 0.6}
    for spelling, expected in (("far=1e-3", 0.6), ("FAR=0.1%", 0.6), ("far=1%", 0.45), ("eer", 0.37), ("0.25", 0.25)):
        assert predictor.resolve_threshold(spelling) == expected, spelling
    a, b = dev_files(2)
    assert predictor.verify(a, b, threshold="far=0.01")[0] == (predictor.contrast(a, b) >= 0.45)
    for wrong in ("far=0.05", "strict", "far=x", "2.0"):
        with pytest.raises(ConfigError, match=r"operating points: eer, far=0\.001, far=0\.01|\[-1, 1\]"):
            predictor.resolve_threshold(wrong)
    # A model calibrated before operating points existed offers its EER threshold alone.
    assert MVectorPredictor(model_dir).operating_points == {"eer": 0.37}
    with pytest.raises(ConfigError, match="its operating points: eer$"):
        MVectorPredictor(model_dir, threshold="far=0.001")


def test_asking_for_a_gpu_without_one_is_a_clear_error(model_dir):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(MVectorError, match="use_gpu=True but no CUDA GPU"):
        MVectorPredictor(model_dir, use_gpu=True)


def _edited_copy(model_dir, folder, edit, drop_state=False):
    copy = shutil.copytree(model_dir, folder)
    path = copy / "config.yml"
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config))
    if drop_state:
        (copy / "model.state").unlink()
    return copy


def test_weights_that_do_not_match_the_config_name_the_tensor(tmp_path, model_dir):
    wider = _edited_copy(model_dir, tmp_path / "wider", lambda c: c["model_conf"]["model_args"].update(channels=128))
    with pytest.raises(ModelMismatchError, match=r"frames\.0\.weight: file \(64, 40, 5\) vs model \(128, 40, 5\)"):
        MVectorPredictor(wider)

    more_bins = _edited_copy(model_dir, tmp_path / "bins",
                             lambda c: c["preprocess_conf"]["method_args"].update(num_mel_bins=80))
    with pytest.raises(ModelMismatchError, match="front-end"):
        MVectorPredictor(more_bins)

    no_state = _edited_copy(model_dir, tmp_path / "no_state",
                            lambda c: c["preprocess_conf"]["method_args"].update(num_mel_bins=80), drop_state=True)
    with pytest.raises(ModelMismatchError, match=r"frames\.0\.weight: file \(64, 40, 5\) vs model \(64, 80, 5\)"):
        MVectorPredictor(no_state)


@pytest.mark.data
def test_every_kind_of_bad_audio_is_an_audio_error_naming_it(tmp_path, predictor):
    for kind, (path, problem) in bad_audio_files(tmp_path).items():
        with pytest.raises(AudioError) as error:
            predictor.predict(path)
        assert path in str(error.value) and problem in str(error.value), kind
        with pytest.raises(AudioError, match=re.escape(problem)):
            predictor.contrast(dev_files(1)[0], path)


def test_minimum_duration(predictor):
    predictor.predict(coloured_noise(MIN_DURATION + 0.01, seed=1), SAMPLE_RATE)
    with pytest.raises(AudioError, match="too short"):
        predictor.predict(coloured_noise(MIN_DURATION - 0.01, seed=1), SAMPLE_RATE)


def test_the_scripts_offer_every_backend_by_name():
    from mvector.inference.backends import BACKENDS
    from mvector.apps.cli import BACKEND_NAMES

    assert sorted(BACKEND_NAMES) == sorted(BACKENDS)


def test_bad_arguments_are_config_errors(model_dir):
    with pytest.raises(ConfigError, match="valid names: auto, onnx, onnx-int8, openvino, openvino-bf16, openvino-int8, torch"):
        MVectorPredictor(model_dir, backend="tensorflow")
    with pytest.raises(ConfigError, match="hop_seconds"):
        MVectorPredictor(model_dir, hop_seconds=20.0)
    with pytest.raises(ConfigError, match="batch_size"):
        MVectorPredictor(model_dir, batch_size=0)
    with pytest.raises(ConfigError, match="not a model directory"):
        MVectorPredictor(model_dir.parent / "nowhere")


def test_packaged_models_are_chosen_by_name(model_dir):
    from mvector.pretrained import DEFAULT_MODEL_NAME, pretrained_model_dir, pretrained_models

    assert pretrained_models()["default"] == pretrained_model_dir(DEFAULT_MODEL_NAME) == pretrained_model_dir()
    with pytest.raises(MVectorError, match="no packaged model named 'huge'; packaged: default, "):
        MVectorPredictor(model="huge")
    with pytest.raises(ConfigError, match="give model_dir or model, not both"):
        MVectorPredictor(model_dir, model="default")


def test_no_model_dir_and_no_shipped_model_is_a_clear_error(monkeypatch):
    import mvector.pretrained

    monkeypatch.setattr(mvector.pretrained, "DEFAULT_MODEL_NAME", "NoSuchModel")  # as before one ships
    with pytest.raises(MVectorError, match="no pretrained default model is shipped .*; pass model_dir"):
        MVectorPredictor()


@pytest.mark.data
def test_voiceprint_library(tmp_path, model_dir):
    a, b, c = dev_files(3)
    db_path = tmp_path / "db"
    with MVectorPredictor(model_dir, audio_db_path=db_path) as predictor:
        assert not db_path.exists()  # opened on first use only
        predictor.register(a, "alice")
        predictor.register(b, "bob")
        assert predictor.get_users() == ["alice", "bob"]
        name, score = predictor.recognition(a)
        assert name == "alice" and score == pytest.approx(1.0, abs=1e-3)
        ranked = predictor.search(b, top_k=5)
        assert [n for n, _ in ranked] == ["bob", "alice"] and ranked[0][1] > ranked[1][1]
        other = predictor.contrast(c, a), predictor.contrast(c, b)
        name, score = predictor.recognition(c, threshold=max(other) + 0.001)
        assert name is None and score == pytest.approx(max(other), abs=1e-3)
        assert predictor.remove_user("alice") is True
        assert predictor.remove_user("alice") is False
        assert predictor.get_users() == ["bob"]
    # Another model: the library re-embeds bob's stored audio through the predictor's embed_waveforms.
    other_model = make_model_dir(tmp_path / "other", seed=1)
    with MVectorPredictor(other_model, audio_db_path=db_path) as predictor:
        assert predictor.fingerprint() != MVectorPredictor(model_dir).fingerprint()
        name, score = predictor.recognition(b)
        assert name == "bob" and score == pytest.approx(1.0, abs=1e-3)


def test_wav_written_at_another_rate_is_resampled(tmp_path, predictor):
    wav = coloured_noise(2.0, seed=4, sample_rate=8000)
    path = write_wav(tmp_path / "8k.wav", wav, sample_rate=8000)
    assert cosine(predictor.predict(path), predictor.predict(wav, sample_rate=8000)) > COS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predictor.predict(path)  # no warnings on the normal path
