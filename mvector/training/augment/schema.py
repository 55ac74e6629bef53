"""The augmentation file's schema (``augmentation.yml``): every key validated, value ranges checked."""
from pathlib import Path

import yaml

from mvector.config import NUM, OPT_STR, Field, validate
from mvector.errors import ConfigError
from mvector.training.augment.noise import GENERATED_NOISES


AUG_SCHEMA = {
    "speed": {
        "prob": Field(NUM, 0.5),
        # Factors other than 1.0; with speed_perturb_as_classes factor i is its own speaker set i+1.
        "speeds": Field((list,), [0.9, 1.1]),
    },
    "volume": {
        "prob": Field(NUM, 0.2),
        "min_gain_db": Field(NUM, -10.0),
        "max_gain_db": Field(NUM, 10.0),
    },
    "noise": {
        "prob": Field(NUM, 0.5),
        "noise_dir": Field(OPT_STR, None),
        "min_snr_db": Field(NUM, 5.0),
        "max_snr_db": Field(NUM, 20.0),
        # Used when noise_dir is null: names in GENERATED_NOISES.
        "generated": Field((list,), ["white", "pink", "brown", "babble"]),
        "min_babble_speakers": Field((int,), 3),
        "max_babble_speakers": Field((int,), 7),
    },
    "reverb": {
        "prob": Field(NUM, 0.3),
        "rir_dir": Field(OPT_STR, None),
        # Size of the simulated bank used when rir_dir is null.
        "num_simulated_rirs": Field((int,), 200),
    },
    "spec_aug": {
        "prob": Field(NUM, 0.5),
        "freq_mask_width": Field((list,), [0, 8]),
        "time_mask_width": Field((list,), [0, 10]),
        "num_freq_masks": Field((int,), 1),
        "num_time_masks": Field((int,), 1),
    },
}
DEFAULT_SPEEDS = tuple(AUG_SCHEMA["speed"]["speeds"].default)


def load_augmentation_config(path) -> dict:
    """Read and validate ``augmentation.yml``: unknown keys and wrong types are ConfigErrors."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"augmentation config not found: {path}") from None
    except OSError as error:
        raise ConfigError(f"cannot read augmentation config {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return validate_augmentation_config(data, where=str(path))


def validate_augmentation_config(data: dict, where: str = "<augmentation config>") -> dict:
    """``data`` completed with defaults, after checking keys, types and value ranges."""
    conf = validate(data, AUG_SCHEMA, where=where)
    _check_values(conf, where)
    return conf


def _check_values(conf: dict, where: str) -> None:
    for section, values in conf.items():
        if not 0.0 <= values["prob"] <= 1.0:
            raise ConfigError(f"{where}: '{section}.prob' must be in [0, 1], got {values['prob']!r}")
    speeds = conf["speed"]["speeds"]
    if not all(isinstance(s, (int, float)) and s > 0 and s != 1.0 for s in speeds):
        raise ConfigError(f"{where}: 'speed.speeds' must be positive factors other than 1.0, got {speeds!r}")
    _check_order(where, "volume", conf["volume"], "min_gain_db", "max_gain_db")
    noise = conf["noise"]
    _check_order(where, "noise", noise, "min_snr_db", "max_snr_db")
    _check_order(where, "noise", noise, "min_babble_speakers", "max_babble_speakers")
    if noise["min_babble_speakers"] < 1:
        raise ConfigError(f"{where}: 'noise.min_babble_speakers' must be >= 1")
    unknown = [n for n in noise["generated"] if n not in GENERATED_NOISES]
    if unknown or (noise["noise_dir"] is None and not noise["generated"] and noise["prob"] > 0):
        raise ConfigError(f"{where}: 'noise.generated' must list some of {', '.join(GENERATED_NOISES)}, "
                          f"got {noise['generated']!r}")
    if conf["reverb"]["num_simulated_rirs"] < 1:
        raise ConfigError(f"{where}: 'reverb.num_simulated_rirs' must be >= 1")
    spec = conf["spec_aug"]
    for key in ("freq_mask_width", "time_mask_width"):
        width = spec[key]
        if not (len(width) == 2 and all(isinstance(w, int) and w >= 0 for w in width) and width[0] <= width[1]):
            raise ConfigError(f"{where}: 'spec_aug.{key}' must be [min, max] frame counts, 0 <= min <= max, "
                              f"got {width!r}")
    for key in ("num_freq_masks", "num_time_masks"):
        if spec[key] < 0:
            raise ConfigError(f"{where}: 'spec_aug.{key}' must be >= 0")


def _check_order(where, section, values, low, high):
    if values[low] > values[high]:
        raise ConfigError(f"{where}: '{section}.{low}' ({values[low]}) is above '{section}.{high}' ({values[high]})")
