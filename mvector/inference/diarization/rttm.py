"""RTTM, the NIST format of who spoke when: ``SPEAKER <file> 1 <start> <duration> <NA> <NA> <speaker> <NA> <NA>``."""
import math
from collections import defaultdict

from mvector.errors import ConfigError
from mvector.fileio import atomic_file


def rttm_lines(uri: str, segments) -> list:
    """RTTM lines of ``segments`` (``(start, end, speaker)``) of the recording named ``uri``."""
    if not uri or any(c.isspace() for c in uri):
        raise ConfigError(f"an RTTM file name may not be empty or hold spaces, got {uri!r}")
    lines = []
    for start, end, speaker in segments:
        label = "_".join(str(speaker).split())  # a field of RTTM cannot hold a space
        lines.append(f"SPEAKER {uri} 1 {start:.3f} {end - start:.3f} <NA> <NA> {label} <NA> <NA>\n")
    return lines


def write_rttm(path, recordings) -> None:
    """``recordings``: ``{uri: segments}``, written whole or not at all."""
    with atomic_file(path) as fh:
        for uri, segments in recordings.items():
            fh.writelines(rttm_lines(uri, segments))


def read_rttm(path) -> dict:
    """``{uri: [(start, end, speaker)]}`` of the SPEAKER lines of an RTTM file; ConfigError naming
    the file and line of anything malformed."""
    recordings = defaultdict(list)
    try:
        text = open(path, encoding="utf-8").read()
    except FileNotFoundError:
        raise ConfigError(f"RTTM file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"RTTM file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith(";"):
            continue
        if fields[0] != "SPEAKER":
            continue  # other record types (SPKR-INFO, LEXEME, ...) say nothing about turns
        if len(fields) < 8:
            raise ConfigError(f"{path}:{number}: a SPEAKER line needs at least 8 fields "
                              f"(SPEAKER file 1 start duration <NA> <NA> speaker), got {len(fields)}")
        try:
            start, duration = float(fields[3]), float(fields[4])
        except ValueError:
            raise ConfigError(f"{path}:{number}: start and duration must be numbers, got {fields[3]!r} {fields[4]!r}") from None
        if not (math.isfinite(start) and math.isfinite(duration)) or start < 0 or duration < 0:
            raise ConfigError(f"{path}:{number}: start and duration must be finite and >= 0, got {start} {duration}")
        recordings[fields[1]].append((start, start + duration, fields[7]))
    if not recordings:
        raise ConfigError(f"RTTM file {path} holds no SPEAKER lines")
    return dict(recordings)
