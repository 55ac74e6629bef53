"""YAML configs, validated when loaded.

A config has six sections (dataset_conf, preprocess_conf, model_conf, loss_conf, optimizer_conf,
train_conf). Every key is declared in ``SCHEMA`` with its type and default, so a misspelt key, a
wrong type or an unknown class name is an error that names the key and the file, never a silent
default. ``*_args`` dicts are checked against the constructor of the class they configure.
"""
import copy
import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from mvector.errors import ConfigError
from mvector.registry import check_kwargs


@dataclass(frozen=True)
class Field:
    types: tuple
    default: Any = None
    # For a class-name field: a callable returning the registry (a dict name -> class) to check it in.
    registry: Optional[Callable[[], dict]] = None
    # For an ``*_args`` dict: the name of the sibling field whose class these are keyword arguments of.
    args_of: Optional[str] = None


def _lazy(module: str, attr: str):
    return lambda: getattr(importlib.import_module(module), attr)


def _torch_optimizers():
    import torch.optim
    return {n: c for n, c in vars(torch.optim).items() if isinstance(c, type) and issubclass(c, torch.optim.Optimizer)
            and c is not torch.optim.Optimizer}


def _backbones():
    from mvector.models import backbone_registry
    return backbone_registry()


NUM = (int, float)
OPT_STR = (str, type(None))
OPT_NUM = (int, float, type(None))
OPT_INT = (int, type(None))

SCHEMA = {
    "dataset_conf": {
        "train_list": Field((str,), "dataset/train_list.txt"),
        "enroll_list": Field(OPT_STR, "dataset/enroll_list.txt"),
        "trials_list": Field(OPT_STR, "dataset/trials_list.txt"),
        "trials": Field(OPT_STR, "dataset/trials.tsv"),
        "sample_rate": Field((int,), 16000),
        "min_duration": Field(NUM, 0.5),
        "max_duration": Field(NUM, 3.0),
        "use_db_normalization": Field((bool,), True),
        "target_db": Field(NUM, -20),
        "do_vad": Field((bool,), False),
        "aug_conf_path": Field(OPT_STR, "configs/augmentation.yml"),
        "speed_perturb_as_classes": Field((bool,), False),
        "batch_size": Field((int,), 64),
        # P x K batches (P speakers, K crops each; batch_size must be P * K), which GE2ELoss and
        # TripletLoss need; null for both: batches drawn from all crops alike.
        "speakers_per_batch": Field(OPT_INT, None),
        "utterances_per_speaker": Field(OPT_INT, None),
        # Audio decoding processes; null: as many as the machine has cores, up to 4 (device.loader_workers).
        "num_workers": Field(OPT_INT, None),
        # Decode the whole training set into memory once (int16): no per-epoch decoding, which on
        # a GPU would starve it (Opus decoding is slow); costs 2 bytes per sample.
        "preload": Field((bool,), False),
        "eval_batch_size": Field((int,), 32),
        "eval_max_duration": Field(NUM, 20.0),
        # Recordings longer than embed_window seconds are embedded as the mean of the embeddings of
        # windows that long, one every embed_hop seconds, by evaluation and the predictor alike.
        # Windows as long as the training crops give embeddings like those the model learnt from.
        "embed_window": Field(NUM, 10.0),
        "embed_hop": Field(NUM, 5.0),
    },
    "preprocess_conf": {
        "feature_method": Field((str,), "Fbank", registry=_lazy("mvector.features", "FEATURIZERS")),
        "method_args": Field((dict,), {"num_mel_bins": 80}, args_of="feature_method"),
        "mean_norm": Field((bool,), True),
    },
    "model_conf": {
        "model": Field((str,), "CAMPPlus", registry=_backbones),
        "model_args": Field((dict,), {}, args_of="model"),
        "classifier": Field((str,), "Cosine", registry=_lazy("mvector.models.classifier", "CLASSIFIERS")),
        "classifier_args": Field((dict,), {}, args_of="classifier"),
    },
    "loss_conf": {
        "loss": Field((str,), "AAMLoss", registry=_lazy("mvector.losses", "LOSSES")),
        "loss_args": Field((dict,), {}, args_of="loss"),
        # Margin ramp in epochs (fractions allowed); null keeps the loss's margin fixed.
        "margin_scheduler_args": {
            "enable": Field((bool,), True),
            "initial_margin": Field(NUM, 0.0),
            "final_margin": Field(NUM, 0.2),
            "increase_start_epoch": Field(NUM, 2),
            "fix_start_epoch": Field(NUM, 10),
            "increase_type": Field((str,), "exp"),
        },
    },
    "optimizer_conf": {
        "optimizer": Field((str,), "Adam", registry=_torch_optimizers),
        "optimizer_args": Field((dict,), {"lr": 0.001, "weight_decay": 1e-5}, args_of="optimizer"),
        "scheduler": Field((str,), "WarmupCosineLR", registry=_lazy("mvector.lr_scheduler", "SCHEDULERS")),
        "scheduler_args": Field((dict,), {}, args_of="scheduler"),
    },
    "train_conf": {
        "max_epoch": Field((int,), 30),
        "max_steps": Field(OPT_INT, None),
        "amp": Field((bool,), False),
        "amp_dtype": Field((str,), "bfloat16"),
        "use_compile": Field((bool,), False),
        "grad_clip": Field(OPT_NUM, 5.0),
        "log_interval": Field((int,), 50),
        "save_every_steps": Field(OPT_INT, 1000),
        # epoch_N/ checkpoints kept: the newest this many (averaging takes the last five); null keeps all.
        "keep_epochs": Field(OPT_INT, 5),
        "eval_every_epochs": Field((int,), 1),
        "seed": Field((int,), 1000),
        "curation": {
            "enable": Field((bool,), False),
            "start_epoch": Field((int,), 5),
            "drop_hardest": Field(NUM, 0.0),
            "drop_easiest": Field(NUM, 0.0),
            "loss_file": Field(OPT_STR, None),
        },
        # Fine-tuning from a teacher model directory (mvector.training.distillation): each crop's embedding
        # is pulled towards the teacher's embedding of its whole utterance, weight * (1 - cos).
        "distillation": {
            "teacher": Field(OPT_STR, None),
            "weight": Field(NUM, 0.0),
        },
    },
}

CHOICES = {
    ("train_conf", "amp_dtype"): ("bfloat16", "float16"),
    ("loss_conf", "margin_scheduler_args", "increase_type"): ("exp", "linear"),
}

def _type_name(types):
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _coerce(value, types):
    """Accept what YAML gives for the declared type: ints for floats, '1e-5' strings for numbers."""
    if bool not in types and isinstance(value, bool):
        return value, False
    if isinstance(value, types):
        return value, True
    if float in types and isinstance(value, str):
        try:
            return float(value), True
        except ValueError:
            return value, False
    return value, False


def _check_sample_rates_agree(config: dict, where: str) -> None:
    """Training crops audio at dataset_conf.sample_rate; the featurizer (and so the predictor) reads
    audio at its own rate: a config where they differ would train on one rate and embed another."""
    pre = config["preprocess_conf"]
    featurizer = _lazy("mvector.features", "FEATURIZERS")()[pre["feature_method"]]
    default = inspect.signature(featurizer).parameters.get("sample_rate")
    rate = pre["method_args"].get("sample_rate", None if default is None else default.default)
    if rate is not None and rate != config["dataset_conf"]["sample_rate"]:
        raise ConfigError(f"{where}: 'dataset_conf.sample_rate' is {config['dataset_conf']['sample_rate']} but the "
                          f"featurizer reads audio at {rate} Hz ('preprocess_conf.method_args.sample_rate'); "
                          f"set them to the same rate")


def _check_counts(config: dict, where: str) -> None:
    for dotted, low in (("dataset_conf.num_workers", 0), ("train_conf.keep_epochs", 1)):
        section, key = dotted.split(".")
        value = config[section][key]
        if value is not None and value < low:
            raise ConfigError(f"{where}: '{dotted}' must be null or at least {low}, got {value!r}")


def _check_speaker_batches(config: dict, where: str) -> None:
    """P x K settings that go together and match batch_size; a loss that needs them gets them."""
    data = config["dataset_conf"]
    speakers, utterances = data["speakers_per_batch"], data["utterances_per_speaker"]
    keys = "'dataset_conf.speakers_per_batch' and 'dataset_conf.utterances_per_speaker'"
    if (speakers is None) != (utterances is None):
        raise ConfigError(f"{where}: {keys} go together: set both or neither")
    if speakers is not None:
        if speakers < 2 or utterances < 2:
            raise ConfigError(f"{where}: {keys} must each be at least 2, got {speakers} and {utterances}")
        if data["batch_size"] != speakers * utterances:
            raise ConfigError(f"{where}: 'dataset_conf.batch_size' is {data['batch_size']} but P x K batches hold "
                              f"{speakers} x {utterances} = {speakers * utterances}; make them agree")
    loss = config["loss_conf"]["loss"]
    if speakers is None and getattr(_lazy("mvector.losses", "LOSSES")()[loss], "needs_speaker_batches", False):
        raise ConfigError(f"{where}: 'loss_conf.loss' {loss} compares a speaker's utterances within a batch and "
                          f"needs P x K batches: set {keys} (and batch_size to their product)")


def _check_embedding_windows(config: dict, where: str) -> None:
    data = config["dataset_conf"]
    window, hop = data["embed_window"], data["embed_hop"]
    if not window > 0:
        raise ConfigError(f"{where}: 'dataset_conf.embed_window' must be > 0 seconds, got {window!r}")
    if not 0 < hop <= window:
        raise ConfigError(f"{where}: 'dataset_conf.embed_hop' must be in (0, embed_window={window}] seconds, "
                          f"got {hop!r}")


def _translate_hf_alias(data: dict, where: str) -> dict:
    """``data`` with the reference toolkit's SSL front-end, ``preprocess_conf.use_hf_model: true`` with
    the model id or folder in ``feature_method``, written as ours: ``feature_method: HFModel`` reading
    its last layer, frozen (as the reference extracts it); a new dict when it changes, ``data`` is
    never modified. Its ``method_args.use_gpu`` has no counterpart: the front-end runs where the model
    runs. Translated per layer, before merging: the alias replaces the front-end of the layers below."""
    pre = data.get("preprocess_conf")
    if not isinstance(pre, dict) or "use_hf_model" not in pre:
        return data
    pre = dict(pre)
    data = {**data, "preprocess_conf": pre}
    use = pre.pop("use_hf_model")
    if not isinstance(use, bool):
        raise ConfigError(f"{where}: 'preprocess_conf.use_hf_model' must be true or false, got {use!r}")
    if not use:
        return data
    model, args = pre.get("feature_method"), pre.get("method_args") or {}
    if not isinstance(model, str) or not model:
        raise ConfigError(f"{where}: 'preprocess_conf.use_hf_model' is true, so 'preprocess_conf.feature_method' must "
                          f"name the Hugging Face model (a hub id or a local folder), got {model!r}")
    if not isinstance(args, dict):
        raise ConfigError(f"{where}: 'preprocess_conf.method_args' must be a mapping, got {type(args).__name__}")
    unknown = [k for k in args if k != "use_gpu"]
    if unknown:
        raise ConfigError(f"{where}: 'preprocess_conf.method_args' with use_hf_model takes only use_gpu, got "
                          f"{', '.join(map(repr, unknown))}; write feature_method: HFModel to pass HFModel's arguments")
    pre["feature_method"] = "HFModel"
    pre["method_args"] = {"model": model, "layers": "last", "freeze": True}
    return data


def validate(data, schema, where: str, path=()):
    """Return ``data`` completed with defaults; raise ConfigError on unknown keys, wrong types or
    values out of range."""
    if data is None:
        data = {}
    if schema is SCHEMA and isinstance(data, dict):
        data = _translate_hf_alias(data, where)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: '{'.'.join(path)}' must be a mapping, got {type(data).__name__}")
    unknown = [k for k in data if k not in schema]
    if unknown:
        key = ".".join(path + (str(unknown[0]),))
        raise ConfigError(f"{where}: unknown key '{key}'; valid keys here: {', '.join(schema)}")
    out = {}
    for key, spec in schema.items():
        keypath = path + (key,)
        dotted = ".".join(keypath)
        if isinstance(spec, dict):
            out[key] = validate(data.get(key), spec, where, keypath)
            continue
        value = copy.deepcopy(data[key]) if key in data else copy.deepcopy(spec.default)
        value, ok = _coerce(value, spec.types)
        if not ok:
            raise ConfigError(f"{where}: '{dotted}' must be {_type_name(spec.types)}, got {value!r}")
        choices = CHOICES.get(keypath)
        if choices and value not in choices:
            raise ConfigError(f"{where}: '{dotted}' must be one of {', '.join(choices)}, got {value!r}")
        if spec.registry is not None and value not in spec.registry():
            raise ConfigError(f"{where}: '{dotted}': unknown name '{value}'; valid names: "
                              f"{', '.join(sorted(spec.registry()))}")
        out[key] = value
    for key, spec in schema.items():
        if isinstance(spec, Field) and spec.args_of:
            owner = schema[spec.args_of]
            cls = owner.registry()[out[spec.args_of]]
            check_kwargs(cls, out[key], where=f"{where}: '{'.'.join(path + (key,))}': ")
            _coerce_numeric_args(cls, out[key])
    if schema is SCHEMA:
        _check_sample_rates_agree(out, where)
        _check_counts(out, where)
        _check_embedding_windows(out, where)
        _check_speaker_batches(out, where)
    return out


def _coerce_numeric_args(cls, kwargs: dict) -> None:
    """YAML 1.1 reads ``1e-5`` as a string: make it a float where the constructor's default is a number."""
    params = inspect.signature(cls.__init__ if inspect.isclass(cls) else cls).parameters
    for name, value in kwargs.items():
        default = params[name].default if name in params else None
        if isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
            try:
                kwargs[name] = float(value)
            except ValueError:
                pass


def parse_override(text: str):
    """``a.b.c=value`` -> (['a','b','c'], value parsed as a YAML scalar, never eval'd)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override '{text}' has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from None
    return keys, value


def apply_overrides(data: dict, overrides):
    for text in overrides or []:
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{key}' is not a section")
        node[keys[-1]] = value
    return data


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def layer_config(base: dict, overlay, where: str, schema=SCHEMA, path=()) -> dict:
    """``overlay`` laid over ``base`` (raw config data, before validation), as a new dict.

    Sections of the schema merge key by key; every other value, ``*_args`` dicts included, is
    replaced whole: a layer that names another loss or scheduler must not inherit the arguments of
    the one it replaces. An empty section changes nothing. Keys unknown to the schema are refused
    here, naming ``where`` (the layer's file), since the merged result no longer tells which file
    brought them.
    """
    if overlay is None:
        return copy.deepcopy(base)
    if not isinstance(overlay, dict):
        raise ConfigError(f"{where}: '{'.'.join(path) or 'the config'}' must be a mapping, "
                          f"got {type(overlay).__name__}")
    if schema is SCHEMA:
        overlay = _translate_hf_alias(overlay, where)
    merged = copy.deepcopy(base) if isinstance(base, dict) else {}
    for key, value in overlay.items():
        if key not in schema:
            dotted = ".".join(path + (str(key),))
            raise ConfigError(f"{where}: unknown key '{dotted}'; valid keys here: {', '.join(schema)}")
        if isinstance(schema[key], dict):
            merged[key] = layer_config(merged.get(key), value, where, schema[key], path + (key,))
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_layers(path: Path, reading: tuple = ()) -> dict:
    """A config file's raw data laid over the files its ``base:`` names (relative to its folder, each
    itself read this way), so a backbone's file holds only what differs from the shared recipe."""
    if path.resolve() in reading:
        chain = " -> ".join(str(p) for p in (*reading, path.resolve()))
        raise ConfigError(f"{path}: 'base' includes itself ({chain})")
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    bases = data.pop("base", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{path}: 'base' must be a config file name or a list of them, got {bases!r}")
    merged = {}
    for base in bases:
        merged = layer_config(merged, _read_layers(path.parent / base, (*reading, path.resolve())),
                              where=str(path.parent / base))
    return layer_config(merged, data, where=str(path))


def load_config(paths, overrides=None) -> dict:
    """Read one YAML config, or several each laid over the ones before it (``layer_config``: e.g. a
    backbone's file completed by a training recipe; a layer may also be a mapping already in memory),
    apply the overrides and validate; the result holds every key, defaults filled in."""
    layers = [paths] if isinstance(paths, (str, Path, dict)) else list(paths)
    if not layers:
        raise ConfigError("no config file given")
    data, names = {}, []
    for layer in layers:
        name = "<layer in memory>" if isinstance(layer, dict) else str(layer)
        data = layer_config(data, layer if isinstance(layer, dict) else _read_layers(Path(layer)), where=name)
        names.append(name)
    data = apply_overrides(data, overrides)
    return validate(data, SCHEMA, where=" + ".join(names))


def config_from_dict(data: dict, where: str = "<config>") -> dict:
    """Validate a config already in memory (e.g. the one stored beside a model's weights)."""
    return validate(copy.deepcopy(data), SCHEMA, where=where)


def save_config(config: dict, path) -> None:
    Path(path).write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
