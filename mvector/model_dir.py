"""Model directories: what the trainer writes and the predictor, eval and export read.

A model directory holds ``model.pth`` (weights: ``backbone.*``, ``featurizer.*`` for a learnt front-end
and, from training, ``classifier.*``),
``config.yml`` (the full validated config, so the directory alone rebuilds model and front-end) and
``model.state`` (JSON: epoch, step, EER, MinDCF, threshold, margin, version, front-end). Training
checkpoints add ``training.pth`` (optimizer, scheduler, scaler, margin scheduler and RNG states).
Directories are written atomically: into a temporary sibling, then renamed into place.
"""
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import yaml

from mvector import __version__
from mvector.audio.spec import AudioSpec
from mvector.config import config_from_dict, save_config
from mvector.errors import ConfigError, ModelMismatchError
from mvector.fileio import file_sha256, fsync_dir

MODEL_FILE = "model.pth"
CONFIG_FILE = "config.yml"
STATE_FILE = "model.state"
TRAINING_FILE = "training.pth"


def recover_model_dir(path) -> None:
    """Finish what a save killed between its two renames left: the previous directory set aside.

    A directory cannot be replaced by a rename in one step, so a save moves the old one to
    ``.<name>.old-<pid>`` first; if the process dies right then, the old one is moved back here.
    Temporary directories of saves that never completed are removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return
    olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not path.exists() and olds:
        os.replace(olds.pop(), path)
    for stale in olds + list(path.parent.glob(f".{path.name}.tmp-*")):
        shutil.rmtree(stale, ignore_errors=True)


def save_model_dir(path, weights: dict, config: dict, state: dict, training_state: dict = None,
                   half: bool = False) -> Path:
    """Write a model directory atomically; an existing one at ``path`` is replaced whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_model_dir(path)
    if half:  # fp16 storage halves shipped weights; loading casts back to float32.
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    state = dict(state, version=__version__, frontend=config["preprocess_conf"])
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        torch.save(weights, tmp / MODEL_FILE)
        save_config(config, tmp / CONFIG_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, ensure_ascii=False), encoding="utf-8")
        if training_state is not None:
            torch.save(training_state, tmp / TRAINING_FILE)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_model_dir(path):
    """Return ``(config, weights, state)`` of a model directory, validating what it holds."""
    path = Path(path)
    recover_model_dir(path)
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise ConfigError(f"{path} is not a model directory: {name} is missing")
    try:
        raw = yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path / CONFIG_FILE}: not valid YAML: {exc}") from None
    config = config_from_dict(raw, where=str(path / CONFIG_FILE))
    state = {}
    if (path / STATE_FILE).is_file():
        try:
            state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path / STATE_FILE}: not valid JSON: {exc}") from None
        if not isinstance(state, dict):
            raise ConfigError(f"{path / STATE_FILE}: must hold a JSON object, got {type(state).__name__}")
    frontend = state.get("frontend")
    if frontend is not None and frontend != config["preprocess_conf"]:
        raise ModelMismatchError(f"{path}: the weights were trained with front-end {frontend} but "
                                 f"{CONFIG_FILE} says {config['preprocess_conf']}")
    weights = load_state_dict_file(path / MODEL_FILE, "weights")
    broken = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise ModelMismatchError(f"{path / MODEL_FILE}: {len(broken)} tensor(s) hold NaN or infinite values, "
                                 f"e.g. {broken[0]}; the weights are damaged (retrain or restore them)")
    return config, weights, state


def torch_load_failure(exc: Exception) -> str:
    """Why ``torch.load`` failed, in a few words: its first sentence, without its advice to load the
    file again with ``weights_only=False`` (which would run the file's code)."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0].split('. ')[0][:200]}" if str(exc) else type(exc).__name__


def load_state_dict_file(path, what: str) -> dict:
    """A file of named tensors, loaded with ``weights_only=True``; ModelMismatchError naming the file for
    anything else (truncated, not a torch file, pickled code, another object)."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # whatever torch raises, the file is unusable: say which one
        raise ModelMismatchError(f"{path}: cannot load {what} ({torch_load_failure(exc)}); only plain tensors "
                                 f"are loaded, never pickled code") from None
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ModelMismatchError(f"{path}: not a state dict (a mapping of tensor names to tensors)")
    return loaded


def load_state_strict(module: torch.nn.Module, weights: dict, where: str) -> None:
    """Load ``weights`` into ``module``, failing with every missing, unexpected or mis-shaped key."""
    check_state_shapes(module, weights, where)
    own = module.state_dict()
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()})


def check_state_shapes(module: torch.nn.Module, weights: dict, where: str) -> None:
    """ModelMismatchError naming every missing, unexpected or mis-shaped key of ``weights`` for ``module``
    (which may live on the meta device)."""
    own = module.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [f"{k}: file {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in weights and weights[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s) e.g. {', '.join(missing[:5])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s) e.g. {', '.join(unexpected[:5])}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {'; '.join(shapes[:5])}")
    if problems:
        raise ModelMismatchError(f"{where}: the weights do not match the model its config describes: "
                                 + "; ".join(problems))


EMBEDDING_PARTS = ("featurizer", "backbone")


def embedding_weights(weights: dict) -> dict:
    """The tensors of a flat state dict that embed (a learnt front-end's and the backbone's), keys
    kept: all a model directory needs (the classifier head and the rest serve training only)."""
    return {k: v for k, v in weights.items() if k.split(".", 1)[0] in EMBEDDING_PARTS}


def split_weights(weights: dict, prefix: str) -> dict:
    """The ``prefix.*`` part of a flat state dict, prefix removed."""
    start = prefix + "."
    return {k[len(start):]: v for k, v in weights.items() if k.startswith(start)}


def load_embedder(path, device="cpu"):
    """Build the inference model of a model directory: ``(embedder, config, state)``, eval mode."""
    from mvector.embedder import SpeakerEmbedder, build_featurizer
    from mvector.models import build_backbone

    config, weights, state = read_model_dir(path)
    given = split_weights(weights, "backbone")
    where = str(Path(path) / MODEL_FILE)
    featurizer = build_featurizer(config)
    # The config's model is first built on the meta device (no memory) and its shapes checked against
    # the file's: a config that disagrees with its weights (e.g. a huge channel count) fails here, not
    # after allocating gigabytes.
    model = config["model_conf"]
    with torch.device("meta"):
        outline = build_backbone(model["model"], featurizer.feature_dim, **model["model_args"])
    check_state_shapes(outline, given, where)
    # A front-end's own tensors (an SSL model's layer weights), strictly too: none for Fbank and the like.
    load_state_strict(featurizer, split_weights(weights, "featurizer"), where)
    embedder = SpeakerEmbedder(featurizer, build_backbone(model["model"], featurizer.feature_dim,
                                                          **model["model_args"]))
    load_state_strict(embedder.backbone, given, where)
    return embedder.to(device).eval(), config, state


# model.state entries that describe one checkpoint's training position or scores, not an average.
CHECKPOINT_ONLY_STATE = ("epoch_step", "eer", "min_dcf", "min_dcf_05", "threshold", "lr")


def average_model_dirs(paths, backbone_only: bool = False) -> tuple:
    """``(config, weights, state)``: the element-wise mean of several checkpoints of one model.

    Averaging the last epochs of a run (as WeSpeaker's recipes do) lands in a flatter part of the
    loss surface than any single one of them; averaging fine-tuned models with the model they
    started from (a "model soup") often beats both. Every directory must hold the same model and
    front-end (``model_conf`` and ``preprocess_conf``) and the same tensors, otherwise a
    ModelMismatchError names the first that differs; ``backbone_only`` keeps and compares only the
    tensors that embed (backbone and learnt front-end: ``embedding_weights``; stages trained with different heads, or a packaged model without
    one). Floating tensors are averaged in float64 and stored float32; integer ones (BatchNorm's
    batch counters) come from the last directory, as do the config and state (its per-checkpoint
    scores dropped, ``averaged_from`` added).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ConfigError("average_model_dirs: no model directory given")

    def read(path):
        config, weights, state = read_model_dir(path)
        if backbone_only:
            weights = embedding_weights(weights)
        return config, weights, state

    config, weights, state = read(paths[-1])
    sums = {k: v.double() if v.is_floating_point() else v for k, v in weights.items()}
    for path in paths[:-1]:
        other_config, other, _ = read(path)
        for section in ("model_conf", "preprocess_conf"):
            mine, theirs = other_config[section], config[section]
            if backbone_only and section == "model_conf":  # the heads are left out, so may differ
                mine, theirs = ({k: conf[k] for k in ("model", "model_args")} for conf in (mine, theirs))
            if mine != theirs:
                raise ModelMismatchError(f"{path}: its {section} differs from {paths[-1]}'s; only checkpoints "
                                         f"of one model can be averaged")
        if other.keys() != weights.keys():
            differ = sorted(other.keys() ^ weights.keys())
            raise ModelMismatchError(f"{path}: holds other tensors than {paths[-1]} (e.g. {differ[0]})")
        for key, value in other.items():
            if value.shape != weights[key].shape:
                raise ModelMismatchError(f"{path}: {key} has shape {tuple(value.shape)}, "
                                         f"{tuple(weights[key].shape)} in {paths[-1]}")
            if value.is_floating_point():
                sums[key] += value.double()
    averaged = {k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in sums.items()}
    state = {k: v for k, v in state.items() if k not in CHECKPOINT_ONLY_STATE}
    state["averaged_from"] = [str(p) for p in paths]
    return config, averaged, state


def embedding_identity(config: dict) -> dict:
    """What in a config decides its embeddings: the front-end, the backbone and how audio is prepared
    (not the training recipe, whose keys may come and go between releases)."""
    return {"preprocess_conf": config["preprocess_conf"],
            "model": {key: config["model_conf"][key] for key in ("model", "model_args")},
            "audio": dataclasses.asdict(AudioSpec.from_config(config))}


def model_fingerprint(path, config=None) -> str:
    """A short hash of a model's weights and of what in its config decides its embeddings: embeddings
    of different fingerprints differ, and a voiceprint library re-embeds when it changes. ``config``:
    the directory's validated config where the caller has read it already (``read_model_dir``)."""
    path = Path(path)
    digest = file_sha256(path / MODEL_FILE)
    if config is None:
        config = config_from_dict(yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8")),
                                  where=str(path / CONFIG_FILE))
    digest.update(json.dumps(embedding_identity(config), sort_keys=True).encode())
    return digest.hexdigest()[:16]
