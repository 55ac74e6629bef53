"""``eval.py``: EER and MinDCF of a model directory on a trial list, or on enrol x test lists."""
import sys
from pathlib import Path

from mvector.audio.spec import AudioSpec
from mvector.errors import MVectorError

# --backend's name for batched extraction (a data loader and padded torch batches), the path AS-Norm
# and enrol x test lists take; every other backend embeds through MVectorPredictor.
BATCHED = "batched"
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
    from mvector.evaluation import cohort_embeddings, evaluate_cross, evaluate_trials
    from mvector.model_dir import load_embedder, read_model_dir

    if bool(enroll_list) != bool(trials_list):
        raise MVectorError("--enroll_list and --trials_list go together: give both or neither")
    if trials and enroll_list:
        raise MVectorError("give either --trials or --enroll_list/--trials_list, not both")
    model_dir = _model_dir(model_dir, model)
    if not model_dir.is_dir():
        raise MVectorError(f"model directory not found: {model_dir}")
    if backend not in (None, BATCHED) and (as_norm_cohort or enroll_list):
        raise MVectorError(f"--backend {backend} embeds through MVectorPredictor, which scores raw cosines of "
                           "a trial list: drop --as_norm_cohort / --enroll_list, or use --backend batched")
    device = choose_device(use_gpu)
    config = read_model_dir(model_dir)[0]
    if configs:
        dataset = load_config(configs)["dataset_conf"]
        config["dataset_conf"].update({key: dataset[key] for key in DATASET_PATH_KEYS})
    windows = _windows(config, window_seconds, hop_seconds)
    config["dataset_conf"].update(embed_window=windows["window_seconds"], embed_hop=windows["hop_seconds"])

    options = dict(batch_size=batch_size, num_workers=num_workers, progress=progress)
    batched = backend == BATCHED or bool(as_norm_cohort) or bool(enroll_list)
    if not batched and (batch_size is not None or num_workers is not None):
        raise MVectorError(f"--batch_size and --num_workers set the data loader of --backend {BATCHED}; a trial "
                           "list goes through MVectorPredictor by default: add --backend batched or drop them")
    if batched:
        embedder, _, _ = load_embedder(model_dir, device)
    cohort = cohort_embeddings(embedder, as_norm_cohort, config, device, **options) if as_norm_cohort else None
    scoring = dict(cohort=cohort, top_k=as_norm_top_k, det_plot_path=det_plot, **options)
    if enroll_list:
        result = evaluate_cross(embedder, enroll_list, trials_list, config, device, **scoring)
        scored = f"every test utterance of {trials_list} against every speaker enrolled from {enroll_list}"
    elif batched:
        trials = _trials(trials, config, fallback_trials)
        if save_threshold:
            raise MVectorError("--save_threshold measures the threshold through MVectorPredictor: drop "
                               "--backend batched / --as_norm_cohort")
        result = evaluate_trials(embedder, trials, config, device, **scoring)
        scored = str(trials)
    else:
        trials = _trials(trials, config, fallback_trials)
        result = _score_through_predictor(model_dir, trials, windows, save_threshold=save_threshold, backend=backend,
                                          use_gpu=device.type == "cuda", det_plot=det_plot, progress=progress,
                                          window_given=window_seconds is not None or hop_seconds is not None)
        scored = str(trials)
    print(f"scored {result['num_trials']} trials: {scored}", file=sys.stderr)
    print(f"EER: {result['eer']:.6f} MinDCF: {result['min_dcf']:.6f} "
          f"MinDCF@0.05: {result['min_dcf_05']:.6f} threshold: {result['threshold']:.6f}")
    return result


def _score_through_predictor(model_dir, trials, windows, save_threshold, backend, use_gpu, det_plot, progress,
                             window_given) -> dict:
    """The trials embedded through MVectorPredictor, the path users call: by default its fastest
    backend ('auto'); with --save_threshold through torch, whose threshold the model then ships."""
    from mvector.inference.threshold import calibrate, predictor_trials

    if save_threshold:
        if backend not in (None, "torch"):
            raise MVectorError("--save_threshold measures the threshold through the torch backend: drop --backend")
        if window_given:
            raise MVectorError("--save_threshold measures the threshold with the windows the model's "
                               "predictor uses (its config's): drop --window_seconds / --hop_seconds")
        if det_plot:
            raise MVectorError("--save_threshold writes no DET plot: run eval.py again with --det_plot")
        result = calibrate(model_dir, trials, progress=progress, use_gpu=use_gpu)
    else:
        result = predictor_trials(model_dir, trials, progress=progress, use_gpu=use_gpu, backend=backend or "auto",
                                  det_plot_path=det_plot, **windows)
    return result
