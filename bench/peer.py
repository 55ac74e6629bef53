"""What every bench shares: printing a figure, finding each backbone's config, and running the
reference toolkit's side."""
import json
import os
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def figure(*words):
    print(" ".join(str(w) for w in words), flush=True)


def backbone_configs() -> dict:
    """Backbone name -> its config file in configs/ (the recipe that ships for it)."""
    found = {}
    for path in sorted((ROOT / "configs").glob("*.yml")):
        model = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("model_conf", {}).get("model")
        if model:
            found[model] = path
    return found


def default_predictor(model_dir=None, threads=2, backend="auto"):
    """What a user gets without asking (``MVectorPredictor(model_dir)``, backend 'auto'; or the
    converted ``backend`` named), with the compiled OpenVINO model pinned to ``threads`` so it is
    compared with a peer on equal cores."""
    from mvector.inference.backends import ConvertedOpenVinoBackend
    from mvector.inference.predictor import MVectorPredictor

    predictor = MVectorPredictor(model_dir, audio_db_path=None, backend=backend)
    if isinstance(predictor._backend, ConvertedOpenVinoBackend):
        predictor._backend.compile(INFERENCE_NUM_THREADS=threads)
    return predictor


def run_peer_command(command, folder) -> dict:
    """Run the reference's side of a bench; its last stdout line is a JSON dict of figures.

    ``-I`` (in ``command``) and a scratch ``folder`` as the working directory make ``mvector`` the
    reference toolkit installed for that interpreter, never this checkout. Failures come back as
    ``{'error': why}``.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"peer run failed: {exc}"}
    lines = done.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"peer run failed (exit {done.returncode}): {tail}"}


def run_peer_on_workload(python, script, workload: dict, *args) -> dict:
    """Run a peer script as ``python -I script AUDIO.npz *args`` on ``workload`` (peer_workload.py)."""
    import tempfile

    from peer_workload import write_workload

    if not Path(python).is_file():
        return {"error": f"peer interpreter not found: {python}"}
    with tempfile.TemporaryDirectory() as folder:
        audio = Path(folder) / "audio.npz"
        write_workload(audio, workload)
        return run_peer_command([str(python), "-I", str(script), str(audio), *map(str, args)], folder)
