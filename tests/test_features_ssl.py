"""The self-supervised front-end (HFModel): tiny randomly initialised WavLM, wav2vec 2.0, HuBERT and
w2v-BERT models built from their transformers configs (no hub download works here), checked against
transformers' own feature extractors, padding-invariant, frozen or fine-tuned, pinned by sha256 in
the model directories they train, refused by export, and the reference toolkit's use_hf_model alias."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mvector.config import load_config
from mvector.errors import ConfigError, ModelMismatchError, MVectorError
from mvector.features import AudioFeaturizer
from training_helpers import REPO, tiny_overrides, torchrun_train, write_lists

pytestmark = pytest.mark.integration
transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")

CONFIGS = REPO / "configs"
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
TINY_CONV = dict(conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16,
                 num_conv_pos_embedding_groups=2)
# name -> (config class, model class, config arguments, its feature extractor)
MODELS = {
    # Group-normalised first convolution (as WavLM Base+ and wav2vec 2.0 Base): run one utterance at a time.
    "wavlm": ("WavLMConfig", "WavLMModel", dict(TINY, **TINY_CONV, feat_extract_norm="group"),
              lambda: transformers.Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=False)),
    # Layer-normalised (as wav2vec 2.0 Large): batched, with an attention mask.
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model",
                 dict(TINY, **TINY_CONV, feat_extract_norm="layer", do_stable_layer_norm=True),
                 lambda: transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)),
    "hubert": ("HubertConfig", "HubertModel", dict(TINY, **TINY_CONV, feat_extract_norm="group"),
               lambda: transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False)),
    "w2v-bert": ("Wav2Vec2BertConfig", "Wav2Vec2BertModel",
                 dict(TINY, feature_projection_input_dim=160, conv_depthwise_kernel_size=5),
                 lambda: transformers.SeamlessM4TFeatureExtractor()),
}


def save_tiny_model(folder: Path, name: str, seed: int = 0) -> Path:
    config_class, model_class, args, extractor = MODELS[name]
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**args))
    model.save_pretrained(folder)
    extractor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssl")
    return {name: save_tiny_model(root / name, name) for name in MODELS}


def featurizer(folder, **args):
    return AudioFeaturizer("HFModel", {"model": str(folder), **args}, mean_norm=False).eval()


def speechlike(seconds, seed):
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    envelope = 0.5 + 0.5 * np.sin(np.arange(n) / 16000 * 2 * np.pi * 3)
    return torch.from_numpy((rng.standard_normal(n) * 0.1 * envelope).astype(np.float32))


def padded(waves):
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for row, wave in zip(batch, waves):
        row[: len(wave)] = wave
    return batch, lengths


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(MODELS))
def test_features_match_transformers_own_pipeline_and_ignore_padding(tiny_models, name):
    """Each row of a padded batch equals the utterance alone, which equals transformers' features of it
    (its feature extractor, then the model). transformers itself pads group-normalised models without
    a mask, which changes a short row's features: the reason such models run one utterance at a time."""
    front = featurizer(tiny_models[name], layers="last")
    reference_model = transformers.AutoModel.from_pretrained(tiny_models[name]).eval()
    waves = [speechlike(s, seed) for seed, s in enumerate((1.0, 0.61, 0.37))]
    batch, lengths = padded(waves)
    with torch.no_grad():
        features, frames = front(batch, lengths)
        for row, wave in enumerate(waves):
            alone, alone_frames = front(wave[None])
            count = int(frames[row])
            assert int(alone_frames[0]) == count > 0
            torch.testing.assert_close(features[row, :count], alone[0, :count], atol=1e-4, rtol=1e-4)
            assert not features[row, count:].any()
            extracted = MODELS[name][3]()(wave.numpy(), sampling_rate=16000, return_tensors="pt")
            reference = reference_model(**extracted).last_hidden_state[0]
            torch.testing.assert_close(alone[0, :count], reference[:count], atol=2e-4, rtol=1e-3)
    assert front.feature_dim == TINY["hidden_size"] and front.num_frames(len(waves[0])) == int(frames[0])


@pytest.mark.unit
def test_layers_are_mixed_by_learnt_weights_and_a_frozen_model_learns_nothing(tiny_models):
    folder = tiny_models["wavlm"]
    mixed = featurizer(folder, layers=[0, 2]).train()
    assert [k for k in mixed.state_dict()] == ["featurizer.layer_weights"]
    assert not list(mixed.featurizer.ssl_model.parameters())[0].requires_grad
    assert not mixed.featurizer.ssl_model.training  # no dropout in a frozen model
    features, _ = mixed(speechlike(0.5, 1)[None])
    features.square().mean().backward()
    assert mixed.featurizer.layer_weights.grad.abs().sum() > 0
    assert featurizer(folder, layers="last").state_dict() == {}
    assert len(featurizer(folder).featurizer.layers) == TINY["num_hidden_layers"] + 1  # "all"

    tuned = featurizer(folder, freeze=False).train()
    tuned(speechlike(0.5, 1)[None])[0].square().mean().backward()
    ssl_grads = [p.grad for name, p in tuned.named_parameters() if name.startswith("featurizer.model.")]
    assert ssl_grads and any(g is not None and g.abs().sum() > 0 for g in ssl_grads)


@pytest.mark.unit
@pytest.mark.parametrize("layers", [[3], [], [0, 0], "middle", [True]])
def test_bad_layer_choices_name_the_valid_range(tiny_models, layers):
    with pytest.raises(ConfigError, match=r"'layers' must be all, last or a list of distinct layer indices in \[0, 2\]"):
        featurizer(tiny_models["wavlm"], layers=layers)


@pytest.mark.unit
def test_missing_unreachable_and_unsupported_models_are_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="model folder not found"):
        featurizer(tmp_path / "absent")
    with pytest.raises(ConfigError, match="not a Hugging Face model folder \\(config.json is missing\\)"):
        featurizer(tmp_path)
    # No hub is reachable here: the message names the id and says how to use a local folder instead.
    with pytest.raises(ConfigError, match=r"cannot fetch Hugging Face model 'mvector-tests/no-such-model'.*"
                                          r"set preprocess_conf.method_args.model to it"):
        featurizer("mvector-tests/no-such-model")
    text_model = transformers.BertModel(transformers.BertConfig(hidden_size=8, num_hidden_layers=1,
                                                                num_attention_heads=1, intermediate_size=8))
    text_model.save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match="unknown SSL model type 'bert'; valid names: hubert, wav2vec2, "
                                          "wav2vec2-bert, wavlm"):
        featurizer(tmp_path / "bert")


@pytest.mark.unit
def test_the_reference_toolkits_use_hf_model_maps_onto_hfmodel(tiny_models, tmp_path):
    config = tmp_path / "reference.yml"
    config.write_text(f"base: {CONFIGS / 'ecapa_tdnn.yml'}\npreprocess_conf:\n  use_hf_model: true\n"
                      f"  feature_method: {tiny_models['w2v-bert']}\n  method_args:\n    use_gpu: true\n",
                      encoding="utf-8")
    pre = load_config(config)["preprocess_conf"]
    assert pre["feature_method"] == "HFModel"
    assert pre["method_args"] == {"model": str(tiny_models["w2v-bert"]), "layers": "last", "freeze": True}
    config.write_text(f"base: {CONFIGS / 'ecapa_tdnn.yml'}\npreprocess_conf:\n  use_hf_model: false\n",
                      encoding="utf-8")
    assert load_config(config)["preprocess_conf"]["feature_method"] == "Fbank"
    config.write_text(f"base: {CONFIGS / 'ecapa_tdnn.yml'}\npreprocess_conf:\n  use_hf_model: true\n"
                      f"  feature_method: x\n  method_args:\n    num_mel_bins: 80\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="with use_hf_model takes only use_gpu, got 'num_mel_bins'"):
        load_config(config)
    # A layer in memory is translated the same way and left as the caller wrote it.
    layer = {"preprocess_conf": {"use_hf_model": True, "feature_method": str(tiny_models["wavlm"])}}
    written = {"preprocess_conf": dict(layer["preprocess_conf"])}
    assert load_config([CONFIGS / "ecapa_tdnn.yml", layer])["preprocess_conf"]["feature_method"] == "HFModel"
    assert layer == written


def test_importing_mvector_does_not_import_transformers():
    code = "import sys, mvector, mvector.features, mvector.config; print('transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return write_lists(tmp_path_factory.mktemp("ssl_lists"), per_speaker=4, speakers=4)


def train_tiny(folder, smoke, save_to, freeze=True):
    from mvector.training.trainer import MVectorTrainer

    train, trials = smoke
    overrides = [o for o in tiny_overrides(train, trials, max_epoch=1) if "num_mel_bins" not in o]
    overrides += [f"preprocess_conf.method_args.model={folder}", f"preprocess_conf.method_args.freeze={freeze}",
                  "dataset_conf.batch_size=8"]
    torch.manual_seed(0)
    trainer = MVectorTrainer(CONFIGS / "wavlm_ecapa.yml", overrides=overrides, use_gpu="false",
                             save_model_path=save_to / "models", log_dir=save_to / "log")
    state = trainer.train()
    assert np.isfinite(state["eer"])
    return trainer.model_dir / "last_model"


@pytest.mark.data
@pytest.mark.slow
def test_the_ssl_config_trains_evaluates_enrols_recognises_and_pins_its_front_end(tiny_models, smoke, tmp_path):
    from mvector.inference.export import export_model
    from mvector.inference.predictor import MVectorPredictor
    from mvector.model_dir import read_model_dir

    folder = save_tiny_model(tmp_path / "wavlm", "wavlm")
    model_dir = train_tiny(folder, smoke, tmp_path)
    config, weights, state = read_model_dir(model_dir)
    pinned = config["preprocess_conf"]["method_args"]
    assert pinned["model"] == str(folder) and len(pinned["sha256"]) == 64 and state["frontend"]["method_args"] == pinned
    assert "featurizer.featurizer.layer_weights" in weights
    assert not any(k.startswith("featurizer.featurizer.model.") for k in weights)

    rows = [line.split("\t") for line in Path(smoke[0]).read_text().splitlines()]
    path = max(rows, key=lambda row: float(row[2]))[0]
    with MVectorPredictor(model_dir, audio_db_path=tmp_path / "db", threshold=0.0) as predictor:
        assert "backend=TorchBackend" in repr(predictor)  # the default (OpenVINO) cannot take it: torch serves
        predictor.register(path, "first")
        name, score = predictor.recognition(path)
        assert name == "first" and score > 0.99

    with pytest.raises(MVectorError, match="HFModel front-end .* does not export to ONNX or OpenVINO yet; nothing was "
                                           "written"):
        export_model(model_dir, tmp_path / "exported", "onnx")
    assert not (tmp_path / "exported").exists()

    save_tiny_model(folder, "wavlm", seed=1)  # other weights in the folder the model names
    with pytest.raises(ModelMismatchError, match="are not the ones this model was trained with"):
        MVectorPredictor(model_dir, audio_db_path=tmp_path / "db2")


@pytest.mark.data
@pytest.mark.slow
def test_a_fine_tuned_ssl_model_is_saved_with_the_model_and_reloads_to_the_same_embeddings(tiny_models, smoke,
                                                                                           tmp_path):
    from mvector.model_dir import load_embedder, read_model_dir

    model_dir = train_tiny(tiny_models["w2v-bert"], smoke, tmp_path, freeze=False)
    _, weights, _ = read_model_dir(model_dir)
    assert any(k.startswith("featurizer.featurizer.model.") for k in weights)
    untouched = transformers.AutoModel.from_pretrained(tiny_models["w2v-bert"]).state_dict()
    key = next(k for k in untouched if k.endswith("weight") and untouched[k].dim() == 2)
    assert not torch.equal(weights[f"featurizer.featurizer.model.{key}"], untouched[key])  # it was trained
    wave = speechlike(1.2, 3)[None]
    with torch.no_grad():
        first = load_embedder(model_dir)[0](wave)
        second = load_embedder(model_dir)[0](wave)
    torch.testing.assert_close(first, second)


@pytest.mark.data
@pytest.mark.slow
def test_torchrun_fine_tunes_an_ssl_front_end_on_two_cpu_processes(smoke, tmp_path):
    """DDP over a fine-tuned SSL model whose last layer is not mixed in. (transformers 5 still gives that
    layer's tensors zero gradients; with versions that leave them without any, DDP must be told.)"""
    folder = save_tiny_model(tmp_path / "w2v-bert", "w2v-bert")
    train, trials = smoke
    overrides = [o for o in tiny_overrides(train, trials, max_epoch=1) if "num_mel_bins" not in o]
    overrides += [f"preprocess_conf.method_args.model={folder}", "preprocess_conf.method_args.freeze=false",
                  "preprocess_conf.method_args.layers=[1]", "dataset_conf.batch_size=4"]
    done = torchrun_train(CONFIGS / "wavlm_ecapa.yml", overrides, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    from mvector.model_dir import read_model_dir

    _, weights, state = read_model_dir(tmp_path / "models" / "EcapaTdnn_HFModel" / "last_model")
    assert state["step"] > 0 and any(k.startswith("featurizer.featurizer.model.") for k in weights)
