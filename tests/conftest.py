"""The suite's tiers, as markers, and the skips that go with them.

Every test module declares its tier, ``unit`` or ``integration`` (collection fails otherwise); the
other markers say what a test needs or costs, so a run can pick what it can afford:

    pytest -m "not slow"          everyday work (a few minutes)
    pytest -m unit                the fast building-block tests alone
    pytest                        everything, as CI runs it

A test marked ``data``, ``gpu`` or ``browser`` is skipped, saying why, where that is missing.
"""
import shutil
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TIERS = ("unit", "integration")
MARKERS = {
    "unit": "one function or class at a time, on synthetic input",
    "integration": "several parts together: training, evaluation, the library, the scripts, the server",
    "slow": "takes more than about 2 s here; deselect with -m 'not slow' for everyday runs",
    "data": f"reads the corpora in {SHARED_DATA} (skipped when they are absent)",
    "network": "reaches the package index (3D-Speaker's published weights, fetched once into a cache)",
    "browser": "drives a headless Chromium through chromedriver (skipped without them)",
    "gpu": "needs a CUDA GPU (skipped without one)",
}


def pytest_configure(config):
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


def pytest_collection_modifyitems(config, items):
    untiered = sorted({item.module.__name__ for item in items
                       if not any(item.get_closest_marker(tier) for tier in TIERS)})
    if untiered:
        raise pytest.UsageError(f"test modules without a tier (pytestmark = pytest.mark.unit or "
                                f"pytest.mark.integration): {', '.join(untiered)}")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Skip before any fixture runs, so a fixture never meets what is missing."""
    if item.get_closest_marker("data") and not SHARED_DATA.is_dir():
        pytest.skip(f"the corpora are not at {SHARED_DATA} (put ../shared/data beside the checkout)")
    if item.get_closest_marker("gpu"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip("no CUDA GPU")
    if item.get_closest_marker("browser") and not (chromium() and shutil.which("chromedriver")):
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")
