"""Name -> class registries, so configs build objects without if/else chains."""
import inspect

from mvector.errors import ConfigError


class Registry(dict):
    """A dict of name -> class whose lookups fail with the list of valid names."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, cls=None, *, name=None):
        """Decorator: ``@REG.register`` or ``@REG.register(name='Alias')``."""

        def add(c):
            key = name or c.__name__
            if key in self:
                raise KeyError(f"{self.kind} '{key}' registered twice")
            self[key] = c
            return c

        return add(cls) if cls is not None else add

    def get_class(self, name, where=""):
        if name not in self:
            raise ConfigError(f"{where}unknown {self.kind} '{name}'; valid names: {', '.join(sorted(self))}")
        return self[name]

    def check_kwargs(self, name, kwargs, where=""):
        """Raise ConfigError naming any keyword the class's constructor does not take."""
        check_kwargs(self.get_class(name, where), kwargs, where=where, what=f"{self.kind} '{name}'")

    def build(self, name, *args, where="", **kwargs):
        self.check_kwargs(name, kwargs, where)
        return self[name](*args, **kwargs)


def check_kwargs(func, kwargs, where="", what=None):
    """Raise ConfigError for keywords ``func`` (a class or callable) does not accept."""
    target = func.__init__ if inspect.isclass(func) else func
    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        what = what or getattr(func, "__name__", str(func))
        raise ConfigError(f"{where}unknown key(s) {', '.join(repr(k) for k in unknown)} for {what}; "
                          f"valid keys: {', '.join(valid)}")
