"""mvector.config.layer_config / load_config: a recipe laid over a backbone's config."""
from pathlib import Path

import pytest
import yaml

from mvector.config import SCHEMA, layer_config, load_config
from mvector.errors import ConfigError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
TDNN = ROOT / "configs" / "tdnn.yml"
TABLE_RECIPE = ROOT / "configs" / "recipes" / "backbone_table.yml"
BACKBONE_CONFIGS = ["cam++.yml", "ecapa_tdnn.yml", "eres2net.yml", "resnet_se.yml", "res2net.yml", "tdnn.yml"]


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_sections_merge_key_by_key_and_the_later_layer_wins(tmp_path):
    recipe = write(tmp_path, "recipe.yml", {"train_conf": {"max_epoch": 3, "curation": {"drop_hardest": 0.1}},
                                            "dataset_conf": {"batch_size": 16}})
    layered = load_config([TDNN, recipe])
    alone = load_config(TDNN)
    assert layered["train_conf"]["max_epoch"] == 3 and layered["dataset_conf"]["batch_size"] == 16
    assert layered["train_conf"]["curation"]["drop_hardest"] == 0.1
    # Everything the recipe does not name is the backbone config's, nested keys included.
    assert layered["train_conf"]["curation"]["start_epoch"] == alone["train_conf"]["curation"]["start_epoch"]
    assert layered["dataset_conf"]["max_duration"] == alone["dataset_conf"]["max_duration"]
    assert layered["model_conf"] == alone["model_conf"] and layered["preprocess_conf"] == alone["preprocess_conf"]


def test_args_dicts_are_replaced_whole():
    """AMLoss has no easy_margin: merged into AAMLoss's arguments it would be an invalid config."""
    base = {"loss_conf": {"loss": "AAMLoss", "loss_args": {"margin": 0.2, "scale": 32, "easy_margin": False}}}
    overlay = {"loss_conf": {"loss": "AMLoss", "loss_args": {"margin": 0.3}}}
    layered = layer_config(base, overlay, where="overlay.yml")
    assert layered["loss_conf"] == {"loss": "AMLoss", "loss_args": {"margin": 0.3}}
    assert base["loss_conf"]["loss"] == "AAMLoss"  # the layers themselves are left alone


def test_an_empty_section_changes_nothing():
    base = {"train_conf": {"max_epoch": 7}}
    assert layer_config(base, {"train_conf": None}, where="x.yml") == base
    assert layer_config(base, None, where="x.yml") == base


def test_an_unknown_key_is_named_with_the_layer_that_brought_it(tmp_path):
    recipe = write(tmp_path, "recipe.yml", {"train_conf": {"max_epochs": 3}})
    with pytest.raises(ConfigError) as err:
        load_config([TDNN, recipe])
    assert "train_conf.max_epochs" in str(err.value) and str(recipe) in str(err.value)


def test_a_section_that_is_not_a_mapping_is_named(tmp_path):
    recipe = write(tmp_path, "recipe.yml", {"train_conf": 5})
    with pytest.raises(ConfigError, match=r"recipe\.yml.*'train_conf' must be a mapping"):
        load_config([TDNN, recipe])


def test_overrides_come_last_and_errors_name_every_layer(tmp_path):
    recipe = write(tmp_path, "recipe.yml", {"train_conf": {"max_epoch": 3}})
    assert load_config([TDNN, recipe], ["train_conf.max_epoch=9"])["train_conf"]["max_epoch"] == 9
    with pytest.raises(ConfigError) as err:
        load_config([TDNN, recipe], ["train_conf.max_epoch=many"])
    assert "train_conf.max_epoch" in str(err.value) and f"{TDNN} + {recipe}" in str(err.value)


def test_no_layer_is_an_error():
    with pytest.raises(ConfigError, match="no config file"):
        load_config([])


def test_a_missing_layer_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found.*absent.yml"):
        load_config([TDNN, tmp_path / "absent.yml"])


@pytest.mark.parametrize("name", BACKBONE_CONFIGS)
def test_the_table_recipe_sets_every_training_key_for_every_backbone(name):
    """Over any backbone the table's recipe gives the same four sections, the backbone only its model."""
    layered = load_config([ROOT / "configs" / name, TABLE_RECIPE])
    recipe = load_config(TABLE_RECIPE)
    backbone = load_config(ROOT / "configs" / name)
    for section in ("dataset_conf", "loss_conf", "optimizer_conf", "train_conf"):
        assert layered[section] == recipe[section]
    assert layered["model_conf"] == backbone["model_conf"] and layered["preprocess_conf"] == backbone["preprocess_conf"]
    sections = set(yaml.safe_load(TABLE_RECIPE.read_text(encoding="utf-8")))
    assert sections == set(SCHEMA) - {"model_conf", "preprocess_conf"}


def test_a_backbone_config_holds_only_its_backbone_and_names_the_recipe_it_builds_on():
    for name in BACKBONE_CONFIGS:
        raw = yaml.safe_load((ROOT / "configs" / name).read_text(encoding="utf-8"))
        assert set(raw) == {"base", "model_conf"}, name
        assert load_config(ROOT / "configs" / name) == load_config([ROOT / "configs" / "base.yml",
                                                                    ROOT / "configs" / name])


def test_base_is_read_relative_to_the_file_and_its_own_keys_win(tmp_path):
    (tmp_path / "recipes").mkdir()
    write(tmp_path / "recipes", "shared.yml", {"train_conf": {"max_epoch": 3, "seed": 5}})
    child = write(tmp_path, "child.yml", {"base": "recipes/shared.yml", "train_conf": {"max_epoch": 9}})
    config = load_config(child)
    assert config["train_conf"]["max_epoch"] == 9 and config["train_conf"]["seed"] == 5


@pytest.mark.parametrize("base, problem", [
    ("missing.yml", "config file not found: .*missing.yml"),
    (["self.yml"], "'base' includes itself"),
    (3, "'base' must be a config file name or a list of them"),
])
def test_a_bad_base_is_one_clear_error(tmp_path, base, problem):
    path = write(tmp_path, "self.yml", {"base": base})
    with pytest.raises(ConfigError, match=problem):
        load_config(path)
