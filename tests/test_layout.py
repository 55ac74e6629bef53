"""The package's structure: the core never imports a wing, training and inference never import each
other, and the voiceprint library imports neither (read from the source, so a lazy import inside a
function counts too)."""
import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[1] / "mvector"
WINGS = ("training", "inference", "library", "apps")
# wing -> the wings it may not import
FORBIDDEN = {
    "core": set(WINGS),
    "training": {"inference", "library", "apps"},
    "inference": {"training", "apps"},
    "library": {"training", "inference", "apps"},
    "apps": set(),
}
# The package's face (``mvector.MVectorPredictor``, ``python -m mvector``, ``python -m mvector.library``
# and the compatibility path ``mvector.predict``) re-exports from the wings and is allowed to.
FACES = {"__init__.py", "__main__.py", "predict.py", "library/__main__.py"}

def _room(path: Path) -> str:
    first = path.relative_to(PACKAGE).parts[0]
    return first if first in WINGS else "core"

def _imported_modules(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:  # ``from mvector import training``
                yield node.lineno, f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("mvector."):
            yield node.lineno, node.value  # a module named for importlib

def _sources():
    return sorted(p for p in PACKAGE.rglob("*.py")
                  if p.relative_to(PACKAGE).as_posix() not in FACES)

def test_no_wing_imports_a_wing_it_must_not():
    breaches = []
    for path in _sources():
        room = _room(path)
        for line, module in _imported_modules(ast.parse(path.read_text(encoding="utf-8"))):
            parts = module.split(".")
            if parts[0] == "mvector" and len(parts) > 1 and parts[1] in FORBIDDEN[room]:
                breaches.append(f"{path.relative_to(PACKAGE)}:{line} ({room}) imports {module}")
    assert not breaches, "\n".join(breaches)

def test_the_check_sees_a_breach(tmp_path):
    source = "def f():\n    from mvector.inference.predictor import MVectorPredictor\n"
    modules = [m for _, m in _imported_modules(ast.parse(source))]
    assert "mvector.inference.predictor" in modules

def test_the_package_face_is_lazy():
    import subprocess
    import sys
    code = ("import sys, mvector; assert 'torch' not in sys.modules; "
            "from mvector import MVectorPredictor; from mvector.predict import MVectorPredictor as P; "
            "assert P is MVectorPredictor")
    subprocess.run([sys.executable, "-c", code], check=True)
