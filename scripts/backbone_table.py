"""The README's backbone table: the six backbones and the reference systems trained with one recipe and
one budget, then scored.

    python scripts/backbone_table.py --steps 3000 [--backbones TDNN Res2Net] [--out models/backbone_table]
        [--recipe configs/recipes/backbone_table.yml] [--trials ../shared/data/dev/trials.tsv]
        [--data_root ../shared/data] [--use_gpu] [--train_only] [--override KEY=VALUE ...]

Run from the repository root. For each row, its config (``configs/<backbone>.yml``: model and
front-end; ``BACKBONE_CONFIGS``) with the recipe laid over it (a reference system, e.g. the LSTM with
GE2E, keeps its own loss and P x K batches: ``OWN_KEYS``) (``mvector.config.load_config``; ``--override``
applies to every backbone alike) is trained by ``MVectorTrainer`` for exactly ``--steps`` steps into
``OUT/<backbone>/``; its embedding backbone is kept in fp16 as ``OUT/<backbone>/final`` and the
training facts in ``OUT/<backbone>.train.json``. The final model is then scored on the trial list
(EER, MinDCF at p_target 0.01), its parameters counted, and the CPU real-time factor of
``MVectorPredictor.predict`` measured (one 3 s utterance, 2 torch threads, median of a few calls
after warm-up; compute seconds / audio seconds). Each backbone's figures go to ``OUT/<backbone>.json``.

``--train_only`` stops after training: on a borrowed GPU machine, whose call cannot carry the dev
set beside the training set (``scripts/device_table.sh``). A backbone whose ``.train.json`` and
``final`` are in OUT (e.g. unpacked from what that call returned) is scored without training again;
scoring runs on the GPU only where there is one, as the figures do not depend on it.

Resuming: a backbone whose JSON exists is skipped, and one whose training was interrupted continues
from its ``last_model`` at the step it was saved; both only after checking that they were made with
the same recipe and budget (otherwise an error: use another --out). The table of every backbone
with a JSON in OUT is printed and written to ``OUT/table.md``.
"""
import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
import torch

from mvector import __version__
from mvector.audio import load_audio
from mvector.device import choose_device
from mvector.config import apply_overrides, config_from_dict, load_config
from mvector.training.data import SpeakerCropDataset, build_train_loader
from mvector.training.corpus import create_data_lists
from mvector.errors import ConfigError, MVectorError
from mvector.evaluation import evaluate_trials
from mvector.lists import read_trials
from mvector.model_dir import (TRAINING_FILE, embedding_weights, load_embedder, read_model_dir,
                               save_model_dir)
from mvector.inference.predictor import MVectorPredictor
from mvector.training.trainer import MVectorTrainer


ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("backbone_table")

@dataclass(frozen=True)
class TableRow:
    config: str              # its file in configs/
    model: str               # the backbone that file names
    own_loss: bool = False   # keeps its file's loss and P x K batches (OWN_KEYS) under the recipe
    default: bool = True     # run unless --backbones names rows


# The table's rows in order: the six backbones with the recipe's AAM loss, then the reference systems
# with their own losses; the SSL row needs an SSL model's folder (--override
# preprocess_conf.method_args.model=DIR, run alone), so it runs only when named.
BACKBONE_CONFIGS = {
    "CAMPPlus": TableRow("cam++.yml", "CAMPPlus"),
    "EcapaTdnn": TableRow("ecapa_tdnn.yml", "EcapaTdnn"),
    "ERes2Net": TableRow("eres2net.yml", "ERes2Net"),
    "ResNetSE": TableRow("resnet_se.yml", "ResNetSE"),
    "Res2Net": TableRow("res2net.yml", "Res2Net"),
    "TDNN": TableRow("tdnn.yml", "TDNN"),
    "LSTM_GE2E": TableRow("lstm_ge2e.yml", "LSTMEncoder", own_loss=True),
    "Transformer_Triplet": TableRow("transformer_triplet.yml", "TransformerEncoder", own_loss=True),
    "ResCNN_Triplet": TableRow("rescnn_triplet.yml", "ResCNN", own_loss=True),
    "WavLM_EcapaTdnn": TableRow("wavlm_ecapa.yml", "EcapaTdnn", default=False),
}
# What a row with its own loss takes from its config rather than from the recipe (the epochs follow:
# P x K epochs have their own length).
OWN_KEYS = ("loss_conf", "dataset_conf.speakers_per_batch", "dataset_conf.utterances_per_speaker",
            "train_conf.max_epoch")
DEFAULT_RECIPE = ROOT / "configs" / "recipes" / "backbone_table.yml"
DEFAULT_DATA_ROOT = ROOT.parent / "shared" / "data"
# The config sections the recipe owns: equal for every row of one table.
RECIPE_SECTIONS = ("dataset_conf", "loss_conf", "optimizer_conf", "train_conf")
# Keys that change speed or logging but not what is trained or measured (batches are keyed by seed,
# epoch and index in any worker; padding never changes an embedding): free to differ between runs.
NEUTRAL_KEYS = ("dataset_conf.num_workers", "dataset_conf.eval_batch_size", "train_conf.log_interval",
                "train_conf.save_every_steps")
RTF_SECONDS = 3.0
RTF_THREADS = 2
RTF_WARMUP_CALLS = 2
TRAINED_SUFFIX = ".train.json"
# The trained embedding backbone (fp16) inside each backbone's folder: what is scored.
FINAL_MODEL = "final"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, required=True, help="training steps of every backbone (the budget)")
    parser.add_argument("--backbones", nargs="+", default=[n for n, row in BACKBONE_CONFIGS.items() if row.default],
                        choices=list(BACKBONE_CONFIGS), metavar="NAME",
                        help=f"rows to run (default: all but the SSL row): {', '.join(BACKBONE_CONFIGS)}")
    parser.add_argument("--out", default="models/backbone_table", help="folder of the runs, JSONs and table.md")
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="training recipe laid over each backbone config")
    parser.add_argument("--configs_dir", default=str(ROOT / "configs"),
                        help=f"folder of the row configs ({', '.join(r.config for r in BACKBONE_CONFIGS.values())})")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="set a config key for every backbone, e.g. dataset_conf.num_workers=4 (repeatable)")
    parser.add_argument("--trials", default=str(DEFAULT_DATA_ROOT / "dev" / "trials.tsv"),
                        help="trial list path1<TAB>path2<TAB>1|0 the final models are scored on")
    parser.add_argument("--data_root", default=str(DEFAULT_DATA_ROOT),
                        help="corpus create_data.py reads when the recipe's train_list is missing")
    parser.add_argument("--use_gpu", action="store_true",
                        help="train and score on CUDA with bfloat16 autocast (the RTF is measured on the CPU)")
    parser.add_argument("--train_only", action="store_true",
                        help="train (into OUT/<backbone>/final and OUT/<backbone>.train.json) but do not score")
    parser.add_argument("--rtf_repeats", type=int, default=5, help="timed predict calls per backbone")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.rtf_repeats < 1:
        parser.error(f"--rtf_repeats must be >= 1, got {args.rtf_repeats}")
    return args


# ------------------------------------------------------------------ configs and budget


def backbone_config(name: str, configs_dir, recipe, overrides) -> dict:
    """The row's config with the recipe laid over it (and for a row with its own loss, that loss and its
    P x K batches laid back over the recipe), then the overrides; validated."""
    row = BACKBONE_CONFIGS[name]
    path = Path(configs_dir) / row.config
    layers = [path, recipe]
    if row.own_loss:
        own = yaml.safe_load(path.read_text(encoding="utf-8"))
        layers.append({"loss_conf": own["loss_conf"],
                       "dataset_conf": {k: own["dataset_conf"][k] for k in
                                        ("batch_size", "speakers_per_batch", "utterances_per_speaker")}})
    config = load_config(layers, overrides)
    if config["model_conf"]["model"] != row.model:
        raise ConfigError(f"{path} + {recipe}: model_conf.model is {config['model_conf']['model']!r}, "
                          f"expected {row.model!r} (the recipe must not set model_conf)")
    return config


def ensure_train_list(config: dict, data_root) -> Path:
    """The recipe's training list, written by the package's data-list builder when it is missing."""
    train_list = Path(config["dataset_conf"]["train_list"])
    if train_list.is_file():
        return train_list
    logger.info("%s not found: writing the data lists from %s", train_list, data_root)
    report = create_data_lists(data_root, train_list.parent)
    logger.info("%s", report.summary())
    if not train_list.is_file():
        raise ConfigError(f"dataset_conf.train_list: {train_list} still missing after writing the data lists "
                          f"into {train_list.parent} (they are named train_list.txt)")
    return train_list


def steps_per_epoch(config: dict) -> int:
    """Full batches per epoch, counted as the trainer counts them (crops per utterance, drop_last)."""
    dataset_conf = config["dataset_conf"]
    seed = config["train_conf"]["seed"]
    dataset = SpeakerCropDataset(dataset_conf["train_list"], dataset_conf, preload=False, seed=seed)
    count = len(build_train_loader(dataset, dataset_conf["batch_size"], 0, seed=seed,
                                   speakers_per_batch=dataset_conf["speakers_per_batch"],
                                   utterances_per_speaker=dataset_conf["utterances_per_speaker"]))
    if count == 0:
        raise ConfigError(f"dataset_conf.batch_size {dataset_conf['batch_size']} is more than the {len(dataset)} "
                          f"training samples of {dataset_conf['train_list']}")
    return count


def budget_overrides(steps: int, epoch_steps: int, use_gpu: bool) -> list:
    """Stop after ``steps``; the LR and margin schedules (in epochs) span the epochs those steps start."""
    overrides = [f"train_conf.max_steps={steps}", f"train_conf.max_epoch={math.ceil(steps / epoch_steps)}"]
    if use_gpu:
        overrides += ["train_conf.amp=true", "train_conf.amp_dtype=bfloat16"]
    return overrides


def recipe_of(config: dict, trials) -> dict:
    """What must be equal across a table's rows: the recipe's sections (budget included) and the trials
    (relative to the repository, so a checkout elsewhere, e.g. on a device, names them alike)."""
    return {**{section: config[section] for section in RECIPE_SECTIONS},
            "trials": os.path.relpath(Path(trials).resolve(), ROOT)}


def _flatten(data, prefix=""):
    if not isinstance(data, dict):
        return {prefix: data}
    flat = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def recipe_differences(first: dict, second: dict, ignore=()) -> str:
    """'' when alike (NEUTRAL_KEYS and the keys under ``ignore`` aside), else the first differing keys
    with both values."""
    first_flat, second_flat = _flatten(first), _flatten(second)
    differing = sorted(k for k in first_flat.keys() | second_flat.keys()
                       if k not in NEUTRAL_KEYS and not k.startswith(tuple(ignore))
                       and first_flat.get(k) != second_flat.get(k))
    return "; ".join(f"{k}: {first_flat.get(k)!r} vs {second_flat.get(k)!r}" for k in differing[:3])


def own_keys(*names) -> tuple:
    """The keys two rows may differ in: those of a row with its own loss."""
    return OWN_KEYS if any(BACKBONE_CONFIGS[name].own_loss for name in names) else ()


def check_made_alike(saved: dict, current: dict, where: str, ignore=()) -> None:
    """A result or checkpoint made with another recipe or budget must not join this table."""
    differences = recipe_differences(saved, current, ignore)
    if differences:
        raise MVectorError(f"{where} was made with another recipe or budget (there vs now: {differences}); "
                           f"pass another --out, or delete it to redo it")


# ------------------------------------------------------------------ one backbone


def train(name: str, config: dict, args) -> dict:
    """Train for the budget (continuing an interrupted run) and keep the final embedding backbone in
    fp16 as ``OUT/<name>/final``; the training facts for the JSON."""
    folder = Path(args.out) / name
    trainer = MVectorTrainer(config, use_gpu="true" if args.use_gpu else "false", save_model_path=folder,
                             log_dir=folder / "log")
    last = trainer.model_dir / "last_model"
    resume = (last / TRAINING_FILE).is_file()
    resumed_step = 0
    if resume:
        saved, _, state = read_model_dir(last)
        check_made_alike(recipe_of(saved, args.trials), recipe_of(trainer.config, args.trials), str(last))
        if saved["model_conf"] != trainer.config["model_conf"]:
            raise MVectorError(f"{last} holds another model ({saved['model_conf']}); pass another --out")
        resumed_step = state.get("step", 0)
        logger.info("%s: continuing from %s at step %s", name, last, resumed_step)
    started = time.monotonic()
    state = trainer.train(resume=resume)
    seconds = time.monotonic() - started
    steps_run = args.steps - resumed_step
    saved, weights, saved_state = read_model_dir(last)
    save_model_dir(folder / FINAL_MODEL, embedding_weights(weights), saved,
                   {k: saved_state[k] for k in ("epoch", "step") if k in saved_state}, half=True)
    return {"device": str(trainer.device), "steps_per_epoch": trainer.steps_per_epoch,
            "epochs": round(args.steps / trainer.steps_per_epoch, 3), "final_lr": state.get("lr"),
            "final_margin": state.get("margin"), "train_seconds": round(seconds, 1),
            "resumed_from_step": resumed_step,
            "seconds_per_step": round(seconds / steps_run, 4) if steps_run > 0 else None}


def score(model_dir, trials, use_gpu: bool, progress: bool) -> dict:
    """EER / MinDCF of the model on the trials and its embedding backbone's parameter count."""
    device = choose_device("auto" if use_gpu else False)
    embedder, config, _ = load_embedder(model_dir, device)
    metrics = evaluate_trials(embedder, trials, config, device, progress=progress)
    return {"params": sum(p.numel() for p in embedder.backbone.parameters()),
            **{key: float(metrics[key]) for key in ("eer", "min_dcf", "min_dcf_05", "threshold")},
            "num_trials": int(metrics["num_trials"]), "skipped_trials": int(metrics["skipped_trials"])}


def rtf_utterance(trials, sample_rate: int) -> np.ndarray:
    """RTF_SECONDS of real speech: the trial list's first file, repeated or cropped to length."""
    first = read_trials(trials)[0][0]
    return np.resize(load_audio(first, target_sample_rate=sample_rate), int(RTF_SECONDS * sample_rate))


def cpu_rtf(model_dir, trials, repeats: int) -> float:
    """Median seconds of ``MVectorPredictor.predict`` on one utterance per second of its audio, on
    RTF_THREADS CPU threads (the thread count is restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(RTF_THREADS)
    try:
        # The threshold plays no part in predict; given, the predictor does not warn that none is stored.
        predictor = MVectorPredictor(model_dir, threshold=0.5, use_gpu=False)
        wav = rtf_utterance(trials, predictor.sample_rate)
        for _ in range(RTF_WARMUP_CALLS):
            predictor.predict(wav, sample_rate=predictor.sample_rate)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            predictor.predict(wav, sample_rate=predictor.sample_rate)
            times.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times) / RTF_SECONDS


def train_backbone(name: str, config: dict, recipe: dict, args) -> dict:
    """Train one backbone; what its ``.train.json`` holds."""
    trained = {"backbone": name, "config": shown(Path(args.configs_dir) / BACKBONE_CONFIGS[name].config),
               "recipe_file": shown(args.recipe),
               "steps": args.steps, "batch_size": config["dataset_conf"]["batch_size"],
               "seed": config["train_conf"]["seed"], "overrides": args.override}
    trained.update(train(name, config, args))
    trained.update(mvector_version=__version__, torch_version=torch.__version__, recipe=recipe)
    return trained


def measure(trained: dict, args) -> dict:
    """Score and time a trained backbone's final model; the row's JSON."""
    model_dir = Path(args.out) / trained["backbone"] / FINAL_MODEL
    if not (model_dir / "model.pth").is_file():
        raise MVectorError(f"{model_dir}: the trained model is missing beside its {TRAINED_SUFFIX}; unpack it "
                           f"there too (scripts/device_table.sh returns both)")
    result = {**trained, "model_dir": str(model_dir)}
    result.update(score(model_dir, args.trials, args.use_gpu, progress=not args.no_progress))
    result.update(cpu_rtf=cpu_rtf(model_dir, args.trials, args.rtf_repeats), rtf_threads=RTF_THREADS,
                  rtf_audio_seconds=RTF_SECONDS, rtf_repeats=args.rtf_repeats)
    return result


def read_result(path: Path) -> dict:
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MVectorError(f"{path}: cannot read this result ({exc}); delete it to redo the backbone") from None
    if not isinstance(result, dict) or not isinstance(result.get("recipe"), dict):
        raise MVectorError(f"{path} is not a result of this script (no recipe); delete it or pass another --out")
    return result


def shown(path) -> str:
    """A path as the table names it: relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # a killed run never leaves half a result that would be skipped next time


# ------------------------------------------------------------------ the table


def markdown_table(rows) -> str:
    lines = ["| backbone | params (M) | steps×batch | dev EER % | MinDCF 0.01 | CPU RTF |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['backbone']} | {row['params'] / 1e6:.2f} | {row['steps']}×{row['batch_size']} | "
                     f"{100 * row['eer']:.2f} | {row['min_dcf']:.3f} | {row['cpu_rtf']:.4f} |")
    if rows:
        first = rows[0]
        lines += ["", f"Recipe {first['recipe_file']}: {first['steps']} steps of {first['batch_size']} "
                      f"({first['epochs']} epochs, seed {first['seed']}) on {first['device']}; "
                      f"{first['num_trials']} trials of {Path(first['recipe']['trials']).name}; CPU RTF: "
                      f"MVectorPredictor.predict of one {first['rtf_audio_seconds']:g} s utterance, "
                      f"{first['rtf_threads']} threads, median of {first['rtf_repeats']} calls after warm-up."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    out = Path(args.out)
    try:
        names = list(dict.fromkeys(args.backbones))
        configs = {name: backbone_config(name, args.configs_dir, args.recipe, args.override) for name in names}
        ensure_train_list(configs[names[0]], args.data_root)
        if not args.train_only and not Path(args.trials).is_file():
            raise MVectorError(f"--trials: trial list not found: {args.trials}")
        for name in names:  # P x K rows have epochs of their own length
            epoch_steps = steps_per_epoch(configs[name])
            if args.steps % epoch_steps:
                logger.warning("%s: --steps %d is not a whole number of epochs (%d steps each): the cosine LR "
                               "ends above its floor; %d or %d steps would end it there", name, args.steps,
                               epoch_steps, args.steps // epoch_steps * epoch_steps or epoch_steps,
                               math.ceil(args.steps / epoch_steps) * epoch_steps)
            configs[name] = config_from_dict(apply_overrides(configs[name], budget_overrides(
                args.steps, epoch_steps, args.use_gpu)), where=f"{name} + budget")
        recipe = recipe_of(configs[names[0]], args.trials)
        for name in names[1:]:  # a key the recipe leaves out comes from each backbone's own config
            differences = recipe_differences(recipe, recipe_of(configs[name], args.trials), own_keys(names[0], name))
            if differences:
                raise ConfigError(f"{args.recipe} leaves keys to the backbone configs, and {names[0]}'s and "
                                  f"{name}'s differ ({differences}): set them in the recipe")
        out.mkdir(parents=True, exist_ok=True)
        for name in BACKBONE_CONFIGS:  # every row of the table, not only this run's
            for path in (out / f"{name}.json", out / f"{name}{TRAINED_SUFFIX}"):
                if path.is_file():
                    check_made_alike(read_result(path)["recipe"], recipe, str(path), own_keys(names[0], name))
        for name in names:
            path, trained_path = out / f"{name}.json", out / f"{name}{TRAINED_SUFFIX}"
            if path.is_file():
                logger.info("%s: %s exists, skipped", name, path)
                continue
            if trained_path.is_file():
                logger.info("%s: trained already (%s)", name, trained_path)
                trained = read_result(trained_path)
            else:
                trained = train_backbone(name, configs[name], recipe, args)
                write_json(trained_path, trained)
            if not args.train_only:
                write_json(path, measure(trained, args))
                logger.info("%s: wrote %s", name, path)
        if args.train_only:
            print(f"trained {', '.join(names)} into {out}: score them with the same command without --train_only")
            return 0
        rows = [read_result(out / f"{name}.json") for name in BACKBONE_CONFIGS if (out / f"{name}.json").is_file()]
    except MVectorError as exc:
        print(f"backbone_table.py: error: {exc}", file=sys.stderr)
        return 1
    table = markdown_table(rows)
    (out / "table.md").write_text(table, encoding="utf-8")
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
