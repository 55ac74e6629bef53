from pathlib import Path

import pytest
import yaml

from mvector.config import SCHEMA, load_config, parse_override
from mvector.errors import ConfigError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yml"))
MODEL_CONFIGS = [p for p in CONFIGS if p.name not in ("augmentation.yml", "base.yml")]
RECIPES = sorted(p for p in (ROOT / "configs" / "recipes").glob("*.yml") if not p.name.startswith("augmentation"))


def write(tmp_path, data):
    path = tmp_path / "conf.yml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_hold_every_section(path):
    config = load_config(path)
    assert set(config) == set(SCHEMA)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipes_load_with_their_augmentation(path, monkeypatch):
    from mvector.training.augment import load_augmentation_config

    monkeypatch.chdir(ROOT)  # recipes name their augmentation file relative to the project
    config = load_config(path)
    assert load_augmentation_config(config["dataset_conf"]["aug_conf_path"])


def test_there_is_one_config_per_backbone():
    names = {load_config(p)["model_conf"]["model"] for p in MODEL_CONFIGS}
    from mvector.models import backbone_registry

    assert names == set(backbone_registry())


def test_missing_keys_take_their_defaults(tmp_path):
    config = load_config(write(tmp_path, {"model_conf": {"model": "TDNN"}}))
    assert config["dataset_conf"]["sample_rate"] == 16000
    assert config["train_conf"]["curation"]["enable"] is False


def test_a_misspelt_key_is_named_with_the_file(tmp_path):
    path = write(tmp_path, {"train_conf": {"max_epochs": 3}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "train_conf.max_epochs" in str(err.value) and str(path) in str(err.value)


def test_a_misspelt_nested_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"loss_conf\.margin_scheduler_args\.final_margn"):
        load_config(write(tmp_path, {"loss_conf": {"margin_scheduler_args": {"final_margn": 0.3}}}))


def test_a_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset_conf\.batch_size.*int"):
        load_config(write(tmp_path, {"dataset_conf": {"batch_size": "many"}}))


def test_booleans_are_not_numbers(tmp_path):
    with pytest.raises(ConfigError, match="max_duration"):
        load_config(write(tmp_path, {"dataset_conf": {"max_duration": True}}))


@pytest.mark.parametrize("window, hop, key", [(0, 0, "embed_window"), (3.0, 0, "embed_hop"), (3.0, 4.0, "embed_hop")])
def test_embedding_windows_out_of_range_are_named(tmp_path, window, hop, key):
    path = write(tmp_path, {"dataset_conf": {"embed_window": window, "embed_hop": hop}})
    with pytest.raises(ConfigError, match=rf"dataset_conf\.{key}") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_yaml_exponent_strings_are_read_as_numbers(tmp_path):
    config = load_config(write(tmp_path, {"optimizer_conf": {"optimizer_args": {"lr": "1e-3"}}}),
                         overrides=["optimizer_conf.scheduler_args.min_lr=1e-6"])
    assert config["optimizer_conf"]["scheduler_args"]["min_lr"] == pytest.approx(1e-6)


@pytest.mark.parametrize("section,key,bad", [
    ("model_conf", "model", "ResNet9000"),
    ("preprocess_conf", "feature_method", "Wavelets"),
    ("loss_conf", "loss", "HingeLoss"),
    ("optimizer_conf", "optimizer", "Adamm"),
    ("optimizer_conf", "scheduler", "Cosine"),
    ("model_conf", "classifier", "Softmax"),
])
def test_an_unknown_class_name_lists_the_valid_ones(tmp_path, section, key, bad):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {section: {key: bad}}))
    assert f"{section}.{key}" in str(err.value) and bad in str(err.value) and "valid names" in str(err.value)


@pytest.mark.parametrize("section,key", [
    ("model_conf", "model_args"), ("preprocess_conf", "method_args"), ("loss_conf", "loss_args"),
    ("optimizer_conf", "optimizer_args"), ("optimizer_conf", "scheduler_args"),
    ("model_conf", "classifier_args"),
])
def test_an_unknown_constructor_argument_is_named(tmp_path, section, key):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {section: {key: {"no_such_arg": 1}}}))
    assert "no_such_arg" in str(err.value) and f"{section}.{key}" in str(err.value)


def test_overrides_are_yaml_scalars_never_code(tmp_path):
    config = load_config(write(tmp_path, {}), overrides=[
        "train_conf.max_epoch=7", "train_conf.amp=true", "dataset_conf.train_list=my list.txt",
        "train_conf.max_steps=null"])
    assert config["train_conf"]["max_epoch"] == 7 and config["train_conf"]["amp"] is True
    assert config["dataset_conf"]["train_list"] == "my list.txt"
    assert config["train_conf"]["max_steps"] is None
    with pytest.raises(ConfigError, match="min_duration"):  # kept as a string, never evaluated
        load_config(write(tmp_path, {}), overrides=["dataset_conf.min_duration=__import__('os').getcwd()"])


def test_an_override_of_an_unknown_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="train_conf.epochs"):
        load_config(write(tmp_path, {}), overrides=["train_conf.epochs=3"])


@pytest.mark.parametrize("text", ["no_equals_sign", "=5", "a.b=[unclosed"])
def test_malformed_overrides_are_errors(text):
    with pytest.raises(ConfigError):
        parse_override(text)


def test_missing_and_broken_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("model_conf: [unclosed")
    with pytest.raises(ConfigError, match="bad.yml"):
        load_config(bad)


def test_a_featurizer_rate_that_differs_from_the_training_rate_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"'dataset_conf.sample_rate' is 8000 but the featurizer reads audio at 16000"):
        load_config(write(tmp_path, {"dataset_conf": {"sample_rate": 8000}}))
    agreed = load_config(write(tmp_path, {"dataset_conf": {"sample_rate": 8000},
                                          "preprocess_conf": {"method_args": {"sample_rate": 8000}}}))
    from mvector.audio.spec import AudioSpec

    spec = AudioSpec.from_config(agreed)
    assert spec.sample_rate == 8000 and spec.load_options["target_sample_rate"] == 8000
    assert spec.with_windows(4.0) == AudioSpec(8000, spec.target_db, spec.vad, 4.0, 2.0)
