"""The decision threshold shipped with a model, measured through the path users call.

``calibrate`` embeds every file of a trial list with ``MVectorPredictor`` (same loading,
normalisation and sliding windows as ``predict``), scores the trials and stores the EER threshold,
EER and MinDCF in the model's ``model.state``, so ``contrast``/``verify`` default to it, and the
operating points (``eer``, ``far=0.01``, ``far=0.001``) a user may choose instead.
"""
import json
import logging
from pathlib import Path

from tqdm import tqdm

from mvector.errors import AudioError
from mvector.fileio import atomic_file
from mvector.evaluation import score_trials
from mvector.lists import read_trials
from mvector.model_dir import STATE_FILE

logger = logging.getLogger(__name__)

FILES_PER_BATCH = 64


def predictor_embeddings(predictor, paths, progress=True) -> dict:
    """``path -> embedding`` for every usable file; unusable ones are reported and left out."""
    embeddings, failures = {}, []
    unique = list(dict.fromkeys(paths))
    for start in tqdm(range(0, len(unique), FILES_PER_BATCH), desc="embedding", disable=not progress,
                      unit="batch"):
        loaded = []
        for path in unique[start:start + FILES_PER_BATCH]:
            try:
                loaded.append((path, predictor.load(path)))
            except AudioError as exc:
                failures.append(str(exc))
        if loaded:
            vectors = predictor.embed_waveforms([wav for _, wav in loaded])
            embeddings.update((path, vector) for (path, _), vector in zip(loaded, vectors))
    if failures:
        logger.warning("%d of %d file(s) could not be used, e.g. %s", len(failures), len(unique),
                       "; ".join(failures[:3]))
    return embeddings


def predictor_trials(model_dir, trials_path, progress=True, use_gpu=False, backend="torch", window_seconds=None,
                     hop_seconds=None, det_plot_path=None) -> dict:
    """EER / MinDCF / threshold of a trial list, every file embedded through ``MVectorPredictor`` with
    the given inference ``backend`` (e.g. to check an exported or int8 graph) and windows (None: the
    model config's)."""
    from mvector.inference.predictor import MVectorPredictor

    paths1, paths2, labels = read_trials(trials_path)
    # The threshold is what this measures; the one given here only keeps the predictor from warning.
    with MVectorPredictor(model_dir=model_dir, threshold=0.5, use_gpu=use_gpu, backend=backend,
                          window_seconds=window_seconds, hop_seconds=hop_seconds) as predictor:
        embeddings = predictor_embeddings(predictor, paths1 + paths2, progress=progress)
    return score_trials(embeddings, paths1, paths2, labels, trials_path, det_plot_path=det_plot_path)


def calibrate(model_dir, trials_path, progress=True, use_gpu=False) -> dict:
    """Measure EER / MinDCF / threshold through the predictor and store them in ``model.state``."""
    result = predictor_trials(model_dir, trials_path, progress=progress, use_gpu=use_gpu)
    state_path = Path(model_dir) / STATE_FILE
    state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else {}
    state.update(threshold=result["threshold"], eer=result["eer"], min_dcf=result["min_dcf"],
                 min_dcf_05=result["min_dcf_05"], operating_points=result["operating_points"],
                 calibration_trials=Path(trials_path).name,
                 calibration_num_trials=result["num_trials"])
    with atomic_file(state_path) as fh:
        fh.write(json.dumps(state, indent=2, ensure_ascii=False))
    return result
