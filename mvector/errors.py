"""The exception types users catch: one per kind of problem, all under MVectorError."""


class MVectorError(Exception):
    """Base class of every error mvector raises on purpose."""


class AudioError(MVectorError, ValueError):
    """Audio that cannot be used: missing, unreadable, empty, silent, too short, NaN..."""


class ConfigError(MVectorError, ValueError):
    """A configuration that is invalid: unknown key, wrong type, unknown class name."""


class ModelMismatchError(ConfigError):
    """Weights that do not fit the model or front-end their config describes."""
