"""One way to open a voiceprint library wherever it lives: a folder (SQLite, the default) or a
``postgresql://`` URL (PostgreSQL, for several server replicas)."""
from mvector.library.names import VoiceprintError


def _sqlite(location, **kwargs):
    from mvector.library.store import VoiceprintDB
    return VoiceprintDB(location, **kwargs)


def _postgres(location, **kwargs):
    from mvector.library.postgres import PostgresVoiceprintDB
    return PostgresVoiceprintDB(location, **kwargs)


# URL scheme -> store; anything without a scheme is a folder.
STORES = {"postgresql": _postgres, "postgres": _postgres}


def open_library(location, **kwargs):
    """The library at ``location``; ``kwargs`` as ``VoiceprintDB`` takes them (embed_fn,
    fingerprint, sample_rate, progress)."""
    text = str(location)
    scheme, separator, _ = text.partition("://")
    if not separator:
        return _sqlite(location, **kwargs)
    if scheme not in STORES:
        raise VoiceprintError(f"voiceprint library {scheme}://...: unknown kind of store; give a folder or one of "
                              f"{', '.join(f'{name}://' for name in sorted(STORES))}")
    return STORES[scheme](text, **kwargs)
