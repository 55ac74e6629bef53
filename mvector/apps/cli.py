"""What the command-line scripts run once they have parsed their arguments.

Every root script parses its arguments and hands one function of the package to ``run_cli``, which
turns our errors into one line on stderr (``error: ...``) and exit status 2 (argparse's status for
bad arguments), so a bad recording or a missing model never shows the user a traceback.
"""
import argparse
import logging
import signal
import sys
import threading
import time
import warnings

import numpy as np

from mvector.errors import ConfigError, MVectorError

# Exit status of a command that failed on its input (argparse uses the same for bad arguments).
EXIT_ERROR = 2


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)


def run_cli(command, *args, **kwargs) -> int:
    """Run ``command``; returns the process exit status. Warnings are shown as one line each."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            command(*args, **kwargs)
    except (MVectorError, OSError) as exc:  # OSError: e.g. an output folder that cannot be written
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as exc:  # a command may say what an interruption keeps
        print(f"interrupted; {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return 130
    return 0


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` keeps the description's line breaks and shows each option's default, unless the
    help text already says what it is (a default worked out at run time) or there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings
                or action.nargs == 0):
            return text
        return f"{text} (default: %(default)s)"


def script_parser(doc: str, prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser every root script starts from: its docstring as the description."""
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=HelpFormatter)


def _device_word(text: str):
    choice = {"auto": "auto", "true": True, "false": False}.get(text.lower())
    if choice is None:
        raise argparse.ArgumentTypeError(f"expected auto, true or false, got {text!r}")
    return choice


def add_device_argument(parser, default=False) -> None:
    """``--use_gpu [auto|true|false]``, the one device vocabulary of every script (``--use_gpu`` alone: true)."""
    parser.add_argument("--use_gpu", nargs="?", const=True, default=default, type=_device_word,
                        metavar="{auto,true,false}",
                        help="run on a CUDA GPU: true (required), false, or auto (when present)")


def log_to_stderr(level=logging.WARNING) -> None:
    """Log lines on stderr, printed above any progress bar instead of through it."""
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
                         if level <= logging.INFO else logging.Formatter("%(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


class _TqdmHandler(logging.StreamHandler):
    def emit(self, record):
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never take the command down
            self.handleError(record)


# mvector.inference.backends.BACKENDS' names, written out so that a script's --help imports no torch (a test
# keeps the two alike).
BACKEND_NAMES = ("auto", "torch", "openvino-bf16", "onnx", "openvino", "onnx-int8", "openvino-int8")


THRESHOLD_HELP = ("same-speaker threshold: a cosine in [-1, 1], or an operating point the model ships: eer (the "
                  "default), far=0.01 or far=0.001 (at most that false-accept rate on its calibration trials)")


def add_model_arguments(parser, threshold=True) -> None:
    """``--model_dir`` / ``--model`` (a packaged model by name) and ``--threshold``, for the scripts
    that embed through MVectorPredictor."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model_dir", default=None, help="model directory (default: the packaged default model)")
    which.add_argument("--model", default=None,
                       help="a packaged model by name, e.g. default or small (python -m mvector --list_models)")
    if threshold:
        parser.add_argument("--threshold", default=None, help=THRESHOLD_HELP)


def add_backend_argument(parser) -> None:
    """``--backend`` for the scripts that embed through MVectorPredictor."""
    parser.add_argument("--backend", default="auto",
                        help="inference backend: auto (on the CPU the model converted for OpenVINO once and "
                             "cached, else torch), torch, openvino-bf16 (float32 features, then the converted "
                             "backbone in bfloat16 on a CPU with bfloat16 units: faster, embeddings within cosine "
                             "0.999), or onnx / openvino / onnx-int8 / openvino-int8 for a directory written by "
                             "export_model.py")


def contrast(audio_path1, audio_path2, model_dir=None, threshold=None, use_gpu=False, backend="auto", model=None):
    """Print the similarity of two recordings and the same-speaker decision."""
    from mvector.inference.predictor import MVectorPredictor

    predictor = MVectorPredictor(model_dir=model_dir, threshold=threshold, use_gpu=use_gpu, backend=backend,
                                 model=model)
    same, score = predictor.verify(audio_path1, audio_path2)
    print(f"similarity: {score:.4f}  threshold: {predictor.threshold:.4f}  same speaker: {'yes' if same else 'no'}")


def average(model_dirs, out_dir, backbone_only=False, half=False):
    """Write the mean of several checkpoints of one model as a new model directory (fp16 with ``half``)."""
    from mvector.model_dir import average_model_dirs, save_model_dir

    config, weights, state = average_model_dirs(model_dirs, backbone_only)
    save_model_dir(out_dir, weights, config, state, half=half)
    print(f"averaged {len(model_dirs)} checkpoints: {out_dir}")


def export(model_dir, out_dir, formats, int8_calibration=None):
    from mvector.inference.export import export_model

    for name, path in export_model(model_dir, out_dir, formats, int8_calibration).items():
        print(f"{name}: {path}")


def import_checkpoint(source, checkpoint, out_dir, architecture=None, overwrite=False):
    """Write a model directory from another toolkit's checkpoint (``--from``: IMPORT_SOURCES)."""
    from mvector.pretrained import IMPORT_SOURCES

    importer = IMPORT_SOURCES.get_class(source, where="--from: ")
    path = importer(checkpoint, out_dir, model=architecture, overwrite=overwrite)
    print(f"imported {checkpoint} -> {path}")


def extract(list_path, out_path, model_dir=None, batch_size=16, use_gpu=False, progress=True, backend="auto",
            model=None):
    """Embed every file of a list into an .npz; unusable files are reported on stderr and skipped."""
    from mvector.inference.extract import describe_failures, extract_to_npz
    from mvector.inference.predictor import MVectorPredictor

    predictor = MVectorPredictor(model_dir=model_dir, use_gpu=use_gpu, batch_size=batch_size, backend=backend,
                                 model=model)
    written, total, failures = extract_to_npz(predictor, list_path, out_path, progress=progress)
    if failures:
        print(describe_failures(failures, total), file=sys.stderr)
    print(f"wrote {written} embedding(s) of size {predictor.embd_dim} to {out_path}")


def list_models():
    """Print each packaged model: its name(s), backbone, size and calibration figures."""
    import json

    from mvector.model_dir import STATE_FILE
    from mvector.pretrained import pretrained_models

    names = {}
    for name, folder in pretrained_models().items():
        names.setdefault(folder, []).append(name)
    for folder, aliases in names.items():
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8")) if (folder / STATE_FILE).is_file() else {}
        figures = (f"dev EER {state['eer']:.2%}, MinDCF {state['min_dcf']:.3f}" if "eer" in state
                   else "not calibrated")
        print(f"{' / '.join(aliases)}: {figures}; {folder}")


def voice_like_signal(sample_rate: int, seconds: float = 2.0) -> np.ndarray:
    """A voice-like test tone: a 140 Hz glottal-ish harmonic series with slow vibrato, plus noise."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    phase = 2 * np.pi * np.cumsum(140 + 10 * np.sin(2 * np.pi * 3 * t)) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 20))
    noise = np.random.default_rng(0).standard_normal(len(t))
    return (0.1 * voice + 0.005 * noise).astype(np.float32)


def quick_check(model_dir=None, audio_path1=None, audio_path2=None, use_gpu=False, repeats=3):
    """``python -m mvector``: compare two recordings when given, else time one embedding of a test
    signal; without a model (none given, none shipped) with the default config's model, random weights."""
    import torch

    from mvector import __version__
    from mvector.pretrained import default_model_dir
    from mvector.inference.predictor import MVectorPredictor

    if (audio_path1 is None) != (audio_path2 is None):
        raise ConfigError("give both --audio_path1 and --audio_path2, or neither")
    if audio_path1 is not None:
        contrast(audio_path1, audio_path2, model_dir=model_dir, use_gpu=use_gpu)
        return
    if model_dir is None:
        try:
            model_dir = default_model_dir()
        except MVectorError:
            pass  # no shipped model yet: the check still exercises features and backbone
    if model_dir is not None:
        predictor = MVectorPredictor(model_dir=model_dir, use_gpu=use_gpu)
        embed, sample_rate, what = predictor.predict, predictor.sample_rate, f"model {predictor.model_dir}"
    else:
        from mvector.device import choose_device
        from mvector.config import config_from_dict
        from mvector.embedder import build_embedder

        config = config_from_dict({})
        device = choose_device(use_gpu)
        embedder = build_embedder(config).to(device).eval()
        sample_rate = embedder.sample_rate
        what = f"{config['model_conf']['model']} with random weights (no pretrained model is shipped yet)"

        def embed(signal, rate):
            with torch.inference_mode():
                return embedder(torch.from_numpy(signal)[None].to(device))[0].cpu().numpy()

    signal = voice_like_signal(sample_rate)
    embedding = embed(signal, sample_rate)  # the first call pays one-off allocation costs
    start = time.perf_counter()
    for _ in range(repeats):
        embedding = embed(signal, sample_rate)
    seconds = (time.perf_counter() - start) / repeats
    if not np.isfinite(embedding).all():
        raise MVectorError(f"{what}: produced a non-finite embedding of the test signal")
    duration = len(signal) / sample_rate
    print(f"mvector {__version__}: {what}")
    print(f"embedding size {embedding.shape[-1]}; {duration:.1f} s of audio embedded in {seconds * 1000:.1f} ms "
          f"({duration / seconds:.0f}x real time)")


def train(configs, override=(), resume=False, pretrained=None, allow_partial=False, save_model_path="models/",
          use_gpu="auto", log_dir="log/"):
    """``train.py``: train from a YAML config (CPU, one GPU, or one process per GPU under torchrun)."""
    from mvector.training.trainer import MVectorTrainer

    if threading.current_thread() is threading.main_thread():
        # SIGINT (Ctrl-C, `kill -INT`, `timeout --signal=INT`) is how a run is stopped with its epochs
        # kept; a process started in the background by a shell inherits it ignored, and Python then
        # leaves it ignored: take it back.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    trainer = MVectorTrainer(configs, overrides=override, use_gpu=use_gpu, save_model_path=save_model_path,
                             log_dir=log_dir)
    try:
        trainer.train(resume=resume, pretrained=pretrained, allow_partial=allow_partial)
    except KeyboardInterrupt:  # Ctrl-C, or `timeout --signal=INT` (scripts/device_train.sh)
        raise KeyboardInterrupt("finished epochs and the last step checkpoint are kept "
                                "(--resume continues from it)") from None


def create_lists(checkout, data_root=None, out_dir="dataset", layout="auto", train_dir=None, dev_dir=None,
                 num_threads=16):
    """``create_data.py``: the data lists of a corpus (``data_root`` default: ``../shared/data`` beside
    the ``checkout``)."""
    from mvector.training.corpus import create_data_lists, default_data_root

    report = create_data_lists(data_root or default_data_root(checkout), out_dir, layout, train_dir, dev_dir,
                               num_threads=num_threads)
    print(report.summary())


def score_training_losses(model_dir, out, train_list=None, max_duration=None, batch_size=None, num_workers=None,
                          use_gpu="auto", progress=True):
    """``score_losses.py``: every training utterance's loss, written as a list for curation."""
    from mvector.device import choose_device
    from mvector.lists import write_loss_file
    from mvector.training.curation import score_losses

    rows = score_losses(model_dir, train_list, device=choose_device(use_gpu), batch_size=batch_size,
                        max_duration=max_duration, num_workers=num_workers, progress=progress)
    write_loss_file(rows, out)
    losses = sorted(loss for _, _, loss in rows)
    print(f"scored {len(rows)} utterances -> {out} (loss median {losses[len(losses) // 2]:.4f}, "
          f"max {losses[-1]:.4f})")
