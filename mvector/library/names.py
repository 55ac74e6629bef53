"""The voiceprint library's errors and its rules for user names: canonical forms, names that cannot
be paths, and new names that cannot pass for another user's."""
import unicodedata

from mvector.errors import MVectorError


MAX_NAME_LENGTH = 128
# Unicode categories a name may not contain: control characters, surrogates, line breaks.
_FORBIDDEN_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}
# Scripts with letters that look alike: a new name may use one of them, not several.
_CONFUSABLE_SCRIPTS = {"LATIN", "GREEK", "CYRILLIC"}


class VoiceprintError(MVectorError):
    """The voiceprint library cannot do what was asked: unreadable database, wrong embedding
    size, a model change it cannot follow."""


class VoiceprintStorageError(VoiceprintError):
    """The library's disk refused a write: full, read-only, or failing."""


class VoiceprintUnavailable(VoiceprintError):
    """The library's database server cannot be reached now (down, restarting, network): try again
    later (the server answers 503)."""


class UserNameError(VoiceprintError, ValueError):
    """A user name that is empty, too long, or could be mistaken for a path."""


def normalize_user_name(name) -> str:
    """The canonical form of a user name (NFC, surrounding whitespace removed), or UserNameError.

    Names never become paths (user folders are internal ids); refusing path-like names anyway
    keeps any later tool that does use them safe."""
    if not isinstance(name, str):
        raise UserNameError(f"user name must be a string, got {type(name).__name__} {name!r}")
    canonical = unicodedata.normalize("NFC", name).strip()
    if not canonical:
        raise UserNameError(f"user name {name!r} is empty")
    if len(canonical) > MAX_NAME_LENGTH:
        raise UserNameError(f"user name {canonical[:20]!r}... is {len(canonical)} characters long, "
                            f"more than {MAX_NAME_LENGTH}")
    if canonical in (".", ".."):
        raise UserNameError(f"user name {name!r} is a path component, not a name")
    if "/" in canonical or "\\" in canonical:
        raise UserNameError(f"user name {name!r} contains a path separator ('/' or '\\')")
    bad = [c for c in canonical if unicodedata.category(c) in _FORBIDDEN_CATEGORIES]
    if bad:
        raise UserNameError(f"user name {name!r} contains control character(s) {bad!r}")
    return canonical


def check_new_user_name(name: str) -> None:
    """Refuse a new user whose name could pass for another's: invisible or text-direction characters
    (``Alice`` + U+200B prints as ``Alice``), or letters from more than one of the Latin, Greek and
    Cyrillic scripts (Cyrillic ``А`` looks like Latin ``A``). Existing users keep their names."""
    hidden = [f"U+{ord(c):04X}" for c in name if unicodedata.category(c) == "Cf"]
    if hidden:
        raise UserNameError(f"user name {name!r} contains invisible or text-direction character(s) "
                            f"{', '.join(hidden)}, which would make it print like another name")
    scripts = {unicodedata.name(c, "").split(" ")[0] for c in name if c.isalpha()} & _CONFUSABLE_SCRIPTS
    if len(scripts) > 1:
        raise UserNameError(f"user name {name!r} mixes {' and '.join(sorted(s.title() for s in scripts))} "
                            f"letters, which look alike; write it in one script")
