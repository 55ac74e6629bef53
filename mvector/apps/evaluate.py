"""``eval.py``: EER and MinDCF of a model directory on a trial list, or on enrol x test lists."""
import sys
from pathlib import Path

from mvector.audio.spec import AudioSpec
from mvector.errors import MVectorError

# The dataset_conf keys --configs may set; the rest of the config belongs to the trained model.
DATASET_PATH_KEYS = ("train_list", "enroll_list", "trials_list", "trials")


def _model_dir(model_dir, model) -> Path:
    if model_dir:
        return Path(model_dir)
    from mvector.pretrained import pretrained_model_dir

    try:
        return Path(pretrained_model_dir(model))
    except MVectorError as exc:
        raise MVectorError(f"--model: {exc}" if model else f"no --model_dir given and {exc}") from None


def _trials(trials, config, fallback_trials) -> Path:
    """--trials, else the model config's dataset_conf.trials when it exists, else ``fallback_trials``."""
    if trials:
        return Path(trials)
    configured = config["dataset_conf"]["trials"]
    if configured and Path(configured).is_file():
        return Path(configured)
    if fallback_trials and Path(fallback_trials).is_file():
        return Path(fallback_trials)
    raise MVectorError(f"no --trials given and neither dataset_conf.trials ({configured}) "
                       f"nor {fallback_trials} exists")


def _windows(config, window_seconds, hop_seconds) -> dict:
    """The windows to embed with: the options (a window alone hops by half of it), else the model config's."""
    spec = AudioSpec.from_config(config).with_windows(window_seconds, hop_seconds)
    if not spec.window_seconds > 0:
        raise MVectorError(f"--window_seconds must be > 0, got {spec.window_seconds}")
    if not 0 < spec.hop_seconds <= spec.window_seconds:
        raise MVectorError(f"--hop_seconds must be in (0, window={spec.window_seconds}], got {spec.hop_seconds}")
    return {"window_seconds": spec.window_seconds, "hop_seconds": spec.hop_seconds}


def evaluate(model_dir=None, model=None, configs=None, trials=None, enroll_list=None, trials_list=None,
             as_norm_cohort=None, as_norm_top_k=300, window_seconds=None, hop_seconds=None, det_plot=None,
             use_gpu=False, batch_size=None, num_workers=None, progress=True, save_threshold=False, backend=None,
             fallback_trials=None) -> dict:
    """Score the trials and print the result: what was scored on stderr, the figures as the one line
    on stdout (``EER: <fraction> MinDCF: <p=0.01> MinDCF@0.05: <p=0.05> threshold: <score>``)."""
    from mvector.config import load_config
    from mvector.device import choose_device
    from mvector.evaluation import cohort_embeddings, evaluate_cross
    from mvector.model_dir import load_embedder

    if bool(enroll_list) != bool(trials_list):
        raise MVectorError("--enroll_list and --trials_list go together: give both or neither")
    if trials and enroll_list:
        raise MVectorError("give either --trials or --enroll_list/--trials_list, not both")
    model_dir = _model_dir(model_dir, model)
    if not model_dir.is_dir():
        raise MVectorError(f"model directory not found: {model_dir}")
    device = choose_device(use_gpu)
    embedder, config, _ = load_embedder(model_dir, device)
    if configs:
        dataset = load_config(configs)["dataset_conf"]
        config["dataset_conf"].update({key: dataset[key] for key in DATASET_PATH_KEYS})
    windows = _windows(config, window_seconds, hop_seconds)
    config["dataset_conf"].update(embed_window=windows["window_seconds"], embed_hop=windows["hop_seconds"])

    options = dict(batch_size=batch_size, num_workers=num_workers, progress=progress)
    cohort = None
    if as_norm_cohort:
        cohort = cohort_embeddings(embedder, as_norm_cohort, config, device, **options)
    scoring = dict(cohort=cohort, top_k=as_norm_top_k, det_plot_path=det_plot, **options)
    if enroll_list:
        result = evaluate_cross(embedder, enroll_list, trials_list, config, device, **scoring)
        scored = f"every test utterance of {trials_list} against every speaker enrolled from {enroll_list}"
    else:
        trials = _trials(trials, config, fallback_trials)
        result = _score_trial_list(model_dir, trials, embedder, config, device, cohort, scoring, windows,
                                   save_threshold=save_threshold, backend=backend, use_gpu=device.type == "cuda",
                                   window_given=window_seconds is not None or hop_seconds is not None,
                                   progress=progress)
        scored = str(trials)
    print(f"scored {result['num_trials']} trials: {scored}", file=sys.stderr)
    print(f"EER: {result['eer']:.6f} MinDCF: {result['min_dcf']:.6f} "
          f"MinDCF@0.05: {result['min_dcf_05']:.6f} threshold: {result['threshold']:.6f}")
    return result


def _score_trial_list(model_dir, trials, embedder, config, device, cohort, scoring, windows, save_threshold,
                      backend, use_gpu, window_given, progress) -> dict:
    from mvector.evaluation import evaluate_trials

    if not (save_threshold or backend):
        return evaluate_trials(embedder, trials, config, device, **scoring)
    from mvector.inference.threshold import calibrate, predictor_trials

    if cohort is not None:
        raise MVectorError("--save_threshold and --backend score raw cosines: drop --as_norm_cohort")
    if save_threshold and backend not in (None, "torch"):
        raise MVectorError("--save_threshold measures the threshold through the torch backend: drop --backend")
    if save_threshold:
        if window_given:
            raise MVectorError("--save_threshold measures the threshold with the windows the model's "
                               "predictor uses (its config's): drop --window_seconds / --hop_seconds")
        return calibrate(model_dir, trials, progress=progress, use_gpu=use_gpu)
    return predictor_trials(model_dir, trials, progress=progress, use_gpu=use_gpu, backend=backend, **windows)
