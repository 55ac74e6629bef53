import copy
import os
import subprocess
import sys

import pytest
import torch

from mvector.config import load_config
from mvector.embedder import build_embedder
from mvector.errors import ConfigError, ModelMismatchError
from mvector.model_dir import average_model_dirs, load_embedder, read_model_dir, save_model_dir

pytestmark = pytest.mark.integration

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "tdnn.yml")


def tiny_config(**overrides):
    extra = [f"{k}={v}" for k, v in overrides.items()]
    return load_config(CONFIG, overrides=["model_conf.model_args.channels=32",
                                          "preprocess_conf.method_args.num_mel_bins=40"] + extra)


def save_tiny(path, config=None, half=False):
    config = config or tiny_config()
    embedder = build_embedder(config)
    weights = {f"backbone.{k}": v for k, v in embedder.backbone.state_dict().items()}
    save_model_dir(path, weights, config, {"threshold": 0.5}, half=half)
    return embedder


def test_round_trip_rebuilds_the_same_model(tmp_path):
    original = save_tiny(tmp_path / "m").eval()
    loaded, config, state = load_embedder(tmp_path / "m")
    assert state["threshold"] == 0.5 and state["frontend"] == config["preprocess_conf"]
    wave = torch.randn(1, 16000)
    torch.testing.assert_close(loaded(wave), original(wave))


def test_half_storage_loads_as_float32(tmp_path):
    save_tiny(tmp_path / "m", half=True)
    assert all(v.dtype in (torch.float16, torch.int64) for v in torch.load(tmp_path / "m" / "model.pth").values())
    loaded, _, _ = load_embedder(tmp_path / "m")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def test_a_config_that_does_not_match_the_weights_names_the_tensor(tmp_path):
    save_tiny(tmp_path / "m")
    text = (tmp_path / "m" / "config.yml").read_text().replace("channels: 32", "channels: 64")
    (tmp_path / "m" / "config.yml").write_text(text)
    with pytest.raises(ModelMismatchError, match="shape mismatch"):
        load_embedder(tmp_path / "m")


def test_a_changed_front_end_is_refused(tmp_path):
    save_tiny(tmp_path / "m")
    text = (tmp_path / "m" / "config.yml").read_text().replace("num_mel_bins: 40", "num_mel_bins: 41")
    (tmp_path / "m" / "config.yml").write_text(text)
    with pytest.raises(ModelMismatchError, match="front-end"):
        read_model_dir(tmp_path / "m")


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="not a model directory"):
        read_model_dir(tmp_path / "absent")
    save_tiny(tmp_path / "m")
    (tmp_path / "m" / "model.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelMismatchError, match="model.pth: cannot load weights") as refused:
        read_model_dir(tmp_path / "m")
    assert "weights_only=False" not in str(refused.value)  # never advice to run the file's code


def test_files_of_the_wrong_type_and_damaged_weights_are_named_before_building(tmp_path):
    embedder = save_tiny(tmp_path / "m")
    (tmp_path / "m" / "model.state").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="model.state: must hold a JSON object, got list"):
        read_model_dir(tmp_path / "m")
    (tmp_path / "m" / "model.state").write_text("{}")
    torch.save([1, 2], tmp_path / "m" / "model.pth")
    with pytest.raises(ModelMismatchError, match="model.pth: not a state dict"):
        read_model_dir(tmp_path / "m")
    weights = {f"backbone.{k}": v.clone() for k, v in embedder.backbone.state_dict().items()}
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name].view(-1)[0] = float("nan")
    torch.save(weights, tmp_path / "m" / "model.pth")
    with pytest.raises(ModelMismatchError, match=f"1 tensor\\(s\\) hold NaN or infinite values, e.g. {name}"):
        read_model_dir(tmp_path / "m")


def test_a_save_killed_between_its_renames_is_recovered(tmp_path):
    save_tiny(tmp_path / "m")
    # What a SIGKILL right after the old directory was set aside leaves behind.
    os.replace(tmp_path / "m", tmp_path / ".m.old-123")
    (tmp_path / ".m.tmp-abc").mkdir()
    _, _, state = read_model_dir(tmp_path / "m")
    assert state["threshold"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_saving_over_an_existing_directory_replaces_it_whole(tmp_path):
    save_tiny(tmp_path / "m")
    (tmp_path / "m" / "stale.txt").write_text("old")
    save_tiny(tmp_path / "m")
    assert not (tmp_path / "m" / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_averaging_checkpoints_gives_the_elementwise_mean(tmp_path):
    torch.manual_seed(0)
    first, second = save_tiny(tmp_path / "a"), save_tiny(tmp_path / "b")
    config, weights, state = average_model_dirs([tmp_path / "a", tmp_path / "b"])
    own_a, own_b = first.backbone.state_dict(), second.backbone.state_dict()
    for key, value in own_a.items():
        if value.is_floating_point():
            torch.testing.assert_close(weights[f"backbone.{key}"], (value + own_b[key]) / 2)
        else:
            assert torch.equal(weights[f"backbone.{key}"], own_b[key])
    assert state["averaged_from"] == [str(tmp_path / "a"), str(tmp_path / "b")] and "threshold" not in state
    save_model_dir(tmp_path / "avg", weights, config, state)
    load_embedder(tmp_path / "avg")  # a model directory like any other


def test_averaging_refuses_checkpoints_of_different_models(tmp_path):
    save_tiny(tmp_path / "a")
    save_tiny(tmp_path / "wide", tiny_config(**{"model_conf.model_args.embd_dim": 64}))
    with pytest.raises(ModelMismatchError, match="wide.*model_conf differs"):
        average_model_dirs([tmp_path / "wide", tmp_path / "a"])
    with pytest.raises(ConfigError, match="not a model directory"):
        average_model_dirs([tmp_path / "a", tmp_path / "absent"])
    with pytest.raises(ConfigError, match="no model directory"):
        average_model_dirs([])


def test_averaging_backbones_of_models_with_different_heads(tmp_path):
    config = tiny_config()
    embedder = save_tiny(tmp_path / "packaged", config)
    trained = {f"backbone.{k}": v * 3 for k, v in embedder.backbone.state_dict().items()}
    trained["classifier.weight"] = torch.randn(10, 32)
    # Fine-tuned with another head's settings (an imported model has none): only the heads differ.
    head_config = copy.deepcopy(config)
    head_config["model_conf"]["classifier_args"] = {"num_centers": 2}
    save_model_dir(tmp_path / "fine_tuned", trained, head_config, {})
    with pytest.raises(ModelMismatchError, match="packaged: its model_conf differs"):
        average_model_dirs([tmp_path / "packaged", tmp_path / "fine_tuned"])
    _, weights, _ = average_model_dirs([tmp_path / "packaged", tmp_path / "fine_tuned"], backbone_only=True)
    assert set(weights) == {k for k in trained if k.startswith("backbone.")}
    for key, value in embedder.backbone.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(weights[f"backbone.{key}"], value * 2)


@pytest.mark.slow
def test_average_model_script(tmp_path):
    save_tiny(tmp_path / "a")
    save_tiny(tmp_path / "b")
    script = os.path.join(os.path.dirname(__file__), "..", "average_model.py")
    done = subprocess.run([sys.executable, script, "--model_dirs", str(tmp_path / "a"), str(tmp_path / "b"),
                           "--out_dir", str(tmp_path / "avg")], capture_output=True, text=True)
    assert done.returncode == 0 and (tmp_path / "avg" / "model.pth").is_file()
    done = subprocess.run([sys.executable, script, "--model_dirs", str(tmp_path / "a"), "--backbone_only", "--half",
                           "--out_dir", str(tmp_path / "half")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    stored = torch.load(tmp_path / "half" / "model.pth")
    assert stored and all(k.startswith("backbone.") for k in stored)
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    loaded, _, _ = load_embedder(tmp_path / "half")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    done = subprocess.run([sys.executable, script, "--model_dirs", str(tmp_path / "absent"),
                           "--out_dir", str(tmp_path / "x")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_config_far_larger_than_its_weights_fails_before_allocating(tmp_path):
    """Shapes are checked on the meta device first: the real model (about 19 GB here) is never built,
    as a 4 GB address-space limit on the loading process proves."""
    import textwrap

    import yaml

    save_tiny(tmp_path / "m")
    config = yaml.safe_load((tmp_path / "m" / "config.yml").read_text(encoding="utf-8"))
    config["model_conf"]["model_args"]["channels"] = 40000
    (tmp_path / "m" / "config.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    child = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {os.path.join(os.path.dirname(__file__), "..")!r})
        import torch
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
        from mvector.errors import ModelMismatchError
        from mvector.model_dir import load_embedder
        try:
            load_embedder({str(tmp_path / "m")!r})
        except ModelMismatchError as error:
            print("refused:", str(error)[:200])
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "refused:" in done.stdout and "shape mismatch" in done.stdout, done.stderr[-2000:]


def test_the_fingerprint_follows_what_changes_embeddings_and_nothing_else(tmp_path):
    """A voiceprint library re-embeds when the fingerprint changes: a recipe key added, removed or
    changed must not cost that, while weights, front-end, backbone or windows must."""
    import yaml

    from mvector.model_dir import CONFIG_FILE, model_fingerprint

    torch.manual_seed(0)
    save_tiny(tmp_path / "m")
    first = model_fingerprint(tmp_path / "m")
    raw = yaml.safe_load((tmp_path / "m" / CONFIG_FILE).read_text())
    raw["train_conf"]["max_epoch"] = 99
    raw["dataset_conf"]["batch_size"] = 7
    del raw["dataset_conf"]["speakers_per_batch"], raw["dataset_conf"]["utterances_per_speaker"]
    (tmp_path / "m" / CONFIG_FILE).write_text(yaml.safe_dump(raw))
    assert model_fingerprint(tmp_path / "m") == first
    for key, value in (("dataset_conf", {"embed_window": 6.0}), ("dataset_conf", {"use_db_normalization": False}),
                       ("preprocess_conf", {"mean_norm": False})):
        changed = copy.deepcopy(raw)
        changed[key].update(value)
        (tmp_path / "m" / CONFIG_FILE).write_text(yaml.safe_dump(changed))
        assert model_fingerprint(tmp_path / "m") != first, value
    torch.manual_seed(1)
    save_tiny(tmp_path / "other")
    assert model_fingerprint(tmp_path / "other") != first
