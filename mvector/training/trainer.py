"""Speaker-embedding training: one loop for CPU, one GPU and ``torchrun`` (DDP) runs.

Waveforms come from the data loader; features are computed batched on the training device, then
SpecAugment, backbone, classifier head and loss. The LR schedule and margin schedule move every
optimizer step, and a checkpoint holds everything that step depends on (optimizer, schedulers,
scaler, RNG states, position in the epoch), so a run killed mid-epoch resumes at the same step
with the same LR and margin. Rank 0 alone logs, evaluates and writes; the other ranks wait.
"""
import copy
import logging
import math
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mvector.config import apply_overrides, config_from_dict, load_config
from mvector.device import loader_workers
from mvector.errors import ConfigError, MVectorError, ModelMismatchError
from mvector.evaluation import evaluate_trials
from mvector.losses import MarginScheduler
from mvector.losses.base import MarginLoss
from mvector.lr_scheduler import SCHEDULERS
from mvector.model_dir import (MODEL_FILE, TRAINING_FILE, load_state_strict, read_model_dir, recover_model_dir,
                               save_model_dir, split_weights)
from mvector.training.augment import build_augmentation
from mvector.training.checkpoint import load_training_state, loader_from_batch, rng_state, seed_everything, set_rng_state
from mvector.training.curation import check_curation_conf, curated_exclusions
from mvector.training.data import SpeakerCropDataset, build_train_loader, epoch_sampler
from mvector.training.distillation import check_distillation_conf, init_head_from_teacher, teacher_table
from mvector.training.distributed import init_distributed, shutdown_distributed
from mvector.training.graph import build_train_graph, compile_errors_explained, load_pretrained, model_weights


logger = logging.getLogger(__name__)


AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
# Set to a directory to get, per rank, the utterance indices of every batch (rank<N>.tsv):
# the way to check which data each DDP process trained on.
TRACE_ENV = "MVECTOR_TRACE_BATCHES"


class MVectorTrainer:
    """Train a speaker-embedding model from a config (a YAML path or an already loaded dict).

    Checkpoints go to ``save_model_path/<model>_<feature method>/`` as model directories:
    ``epoch_N/`` after each epoch, ``last_model/`` after each epoch and every ``save_every_steps``
    steps, ``best_model/`` when the evaluated EER improves. VisualDL scalars go to ``log_dir``.
    """

    def __init__(self, config, overrides=None, use_gpu="auto", save_model_path="models/", log_dir="log/"):
        if isinstance(config, dict):
            self.config = config_from_dict(apply_overrides(copy.deepcopy(config), overrides))
        else:
            self.config = load_config(config, overrides)
        self.use_gpu = use_gpu
        conf = self.config
        self.model_dir = Path(save_model_path) / f"{conf['model_conf']['model']}_{conf['preprocess_conf']['feature_method']}"
        self.log_dir = Path(log_dir)
        self.train_conf = conf["train_conf"]
        self.amp_dtype = AMP_DTYPES[self.train_conf["amp_dtype"]]
        self.ctx = None

    # ------------------------------------------------------------------ set-up

    def _log(self, message: str) -> None:
        if self.ctx is None or self.ctx.is_main:
            logger.info(message)

    def _build(self) -> None:
        conf, train_conf = self.config, self.train_conf
        dataset_conf = conf["dataset_conf"]
        train_list = Path(dataset_conf["train_list"])
        if not train_list.is_file():
            raise ConfigError(f"dataset_conf.train_list: training list not found: {train_list}")
        check_curation_conf(train_conf["curation"])
        seed = train_conf["seed"]
        # The same seed on every rank gives every rank the same initial weights.
        seed_everything(seed)
        augmentation = build_augmentation(dataset_conf["aug_conf_path"], dataset_conf["sample_rate"])
        speed_perturb, self.wave_augment = augmentation.speed, augmentation.wave
        distillation = train_conf["distillation"]
        check_distillation_conf(distillation, speed_perturb)
        self.dataset = SpeakerCropDataset(train_list, dataset_conf, speed_perturb=speed_perturb, seed=seed)
        self.num_classes = self.dataset.num_speakers
        self.loader = build_train_loader(self.dataset, dataset_conf["batch_size"], loader_workers(dataset_conf["num_workers"]),
                                         seed=seed, distributed=self.ctx.is_distributed, drop_last=True,
                                         speakers_per_batch=dataset_conf["speakers_per_batch"],
                                         utterances_per_speaker=dataset_conf["utterances_per_speaker"])
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"dataset_conf.batch_size: {dataset_conf['batch_size']} is more than the "
                              f"{len(self.dataset)} training samples per process in {train_list}; no full batch")

        self.graph = build_train_graph(conf, self.num_classes, augmentation, distillation["weight"]).to(self.device)
        self.featurizer, self.backbone = self.graph.featurizer, self.graph.backbone
        # Every model directory it writes pins what the front-end loaded (an SSL model's weights).
        conf["preprocess_conf"]["method_args"].update(self.featurizer.pinned_args())
        self.classifier, self.loss = self.graph.classifier, self.graph.loss
        self.teacher = None
        if distillation["teacher"] is not None:
            # Rank 0 embeds and caches; the other ranks then read the cache.
            if self.ctx.is_main:
                self.teacher = teacher_table(distillation["teacher"], self.dataset, self.model_dir, self.device)
            self.ctx.barrier()
            if not self.ctx.is_main:
                self.teacher = teacher_table(distillation["teacher"], self.dataset, self.model_dir, self.device,
                                             progress=False)
        self.parts = self.graph.parts

        opt_conf = conf["optimizer_conf"]
        try:
            self.optimizer = getattr(torch.optim, opt_conf["optimizer"])(self.graph.parameters(),
                                                                          **opt_conf["optimizer_args"])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"optimizer_conf.optimizer_args for {opt_conf['optimizer']}: {exc}") from None
        # Schedules count full epochs; curated epochs are shorter, so the LR then ends a little
        # above its floor.
        self.scheduler = SCHEDULERS.build(opt_conf["scheduler"], self.optimizer, self.steps_per_epoch,
                                          train_conf["max_epoch"], where="optimizer_conf.scheduler: ",
                                          **opt_conf["scheduler_args"])
        use_scaler = train_conf["amp"] and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.margin_scheduler = self._build_margin_scheduler()
        self.evaluator = self.graph.embedder()

    def _build_margin_scheduler(self):
        args = self.config["loss_conf"]["margin_scheduler_args"]
        if not args["enable"]:
            return None
        if not isinstance(self.loss, MarginLoss):
            self._log(f"note: loss_conf.loss {type(self.loss).__name__} has no margin; "
                      f"loss_conf.margin_scheduler_args is ignored")
            return None
        # The config gives the ramp in epochs (fractions allowed); the scheduler counts steps.
        return MarginScheduler(self.loss, args["initial_margin"], args["final_margin"],
                               int(round(args["increase_start_epoch"] * self.steps_per_epoch)),
                               int(round(args["fix_start_epoch"] * self.steps_per_epoch)),
                               args["increase_type"])

    def _wrap(self) -> None:
        """DDP and torch.compile, after every weight is in place (DDP broadcasts rank 0's)."""
        self.model = self.graph
        if self.train_conf["use_compile"]:
            # In place, so state_dict keys keep their names and checkpoints stay plain.
            self.backbone.compile()
        if self.ctx.is_distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Triplet losses may leave the head unused (no class loss), a fine-tuned SSL model some of its
            # own tensors (e.g. its masking embedding): DDP must be told.
            unused = self.loss.needs_embeddings or self.featurizer.featurizer.may_leave_parameters_unused
            self.model = DistributedDataParallel(self.graph, device_ids=ids, find_unused_parameters=unused)

    # ------------------------------------------------------------------ checkpoints

    def _metrics_state(self, epoch, batches_done) -> dict:
        return {"epoch": epoch, "epoch_step": batches_done, "step": self.global_step,
                **{k: self.last_metrics.get(k) for k in ("eer", "min_dcf", "min_dcf_05", "threshold")},
                "margin": self.loss.margin if isinstance(self.loss, MarginLoss) else None, "lr": self.optimizer.param_groups[0]["lr"],
                "num_classes": self.num_classes}

    def _save(self, names, epoch, batches_done, epoch_complete=False) -> None:
        """Write the model directories ``names``; every rank must call this (RNG states are gathered)."""
        rng = self.ctx.gather(rng_state(self.device))
        self.last_state = state = self._metrics_state(epoch, batches_done)
        if self.ctx.is_main:
            weights = model_weights(self.parts)
            training = {"epoch": epoch, "batches_done": batches_done, "epoch_complete": epoch_complete,
                        "global_step": self.global_step,
                        "steps_per_epoch": self.steps_per_epoch, "world_size": self.ctx.world_size,
                        "best_eer": self.best_eer, "last_metrics": self.last_metrics,
                        "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "scaler": self.scaler.state_dict(),
                        "margin_scheduler": self.margin_scheduler.state_dict() if self.margin_scheduler else None,
                        "rng": rng}
            for name in names:
                save_model_dir(self.model_dir / name, weights, self.config, state,
                               training if name != "best_model" else None)
        self.ctx.barrier()

    def _resume(self) -> tuple:
        """Restore everything from last_model/; return (epoch to start, batches to skip, this rank's RNG)."""
        path = self.model_dir / "last_model"
        _, weights, _ = read_model_dir(path)
        for prefix, module in self.parts.items():
            load_state_strict(module, split_weights(weights, prefix), str(path / MODEL_FILE))
        training = load_training_state(path / TRAINING_FILE)
        if training["steps_per_epoch"] != self.steps_per_epoch:
            raise ConfigError(f"--resume: {path} was trained with {training['steps_per_epoch']} steps per epoch, "
                              f"this run has {self.steps_per_epoch} (train list, batch size or process count "
                              f"changed); the LR and margin schedules cannot continue")
        self.optimizer.load_state_dict(training["optimizer"])
        self.scheduler.load_state_dict(training["scheduler"])
        self.scaler.load_state_dict(training["scaler"])
        if self.margin_scheduler is not None and training["margin_scheduler"] is not None:
            self.margin_scheduler.load_state_dict(training["margin_scheduler"])
        self.global_step = training["global_step"]
        self.best_eer = training["best_eer"]
        self.last_metrics = training["last_metrics"]
        rngs = training["rng"]
        if len(rngs) != self.ctx.world_size:
            self._log(f"note: checkpoint saved by {len(rngs)} process(es), resuming with {self.ctx.world_size}: "
                      f"random streams restart from rank 0's")
        rng = rngs[self.ctx.rank] if self.ctx.rank < len(rngs) else rngs[0]
        self._log(f"resumed from {path}: epoch {training['epoch']}, {training['batches_done']}/"
                  f"{self.steps_per_epoch} batches, step {self.global_step}, "
                  f"lr {self.optimizer.param_groups[0]['lr']:.3g}")
        if training["epoch_complete"]:
            return training["epoch"] + 1, 0, rng
        return training["epoch"], training["batches_done"], rng

    def _load_pretrained(self, path, allow_partial) -> bool:
        """Load what fits of another model directory; True when its classifier head was loaded too."""
        config, weights, _ = read_model_dir(path)
        if config["preprocess_conf"] != self.config["preprocess_conf"]:
            message = (f"--pretrained {path}: its front-end {config['preprocess_conf']} differs from this config's "
                       f"preprocess_conf {self.config['preprocess_conf']}")
            if not allow_partial:
                raise ModelMismatchError(message + "; pass --allow_partial to load it anyway")
            self._log("warning: " + message)
        loaded, report = load_pretrained(self.parts, weights, allow_partial, where=str(Path(path) / MODEL_FILE))
        self._log(f"pretrained {path}: loaded {loaded} tensor(s), left out {len(report)}")
        for line in report:
            self._log("  " + line)
        return not any(line.startswith("classifier.") for line in report)

    def _init_head_from_teacher(self) -> None:
        """A head that did not come with --pretrained starts at the teacher's speaker centres."""
        labels = [u.label for u in self.dataset.utterances]
        if self.num_classes == self.dataset.num_base_speakers and init_head_from_teacher(
                self.classifier, self.teacher, labels):
            self._log("classifier centres set to the teacher's mean embedding of each speaker")

    # ------------------------------------------------------------------ curation and evaluation

    def _apply_curation(self, epoch) -> None:
        curation = self.train_conf["curation"]
        if not curation["enable"]:
            return
        if epoch < curation["start_epoch"]:
            self.dataset.set_excluded([])
            return
        if self._excluded is None:
            self._excluded, summary = curated_exclusions(self.dataset, curation)
            self._log(f"curation from epoch {curation['start_epoch']}: {summary}")
        self.dataset.set_excluded(self._excluded)

    def _evaluate(self, epoch) -> dict:
        trials = self.config["dataset_conf"]["trials"]
        if not trials or not Path(trials).is_file():
            if not self._warned_no_trials:
                self._log(f"note: dataset_conf.trials {trials!r} not found; skipping evaluation")
                self._warned_no_trials = True
            return {}
        self.graph.eval()
        try:
            metrics = evaluate_trials(self.evaluator, trials, self.config, self.device, progress=self.ctx.is_main)
        finally:
            self.graph.train()
        metrics = {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in metrics.items()}
        self._log(f"epoch {epoch}: EER {metrics['eer']:.4f}, MinDCF {metrics['min_dcf']:.4f}, "
                  f"threshold {metrics['threshold']:.4f} on {metrics.get('num_trials', '?')} trials")
        return metrics

    # ------------------------------------------------------------------ training

    def train(self, resume=False, pretrained=None, allow_partial=False) -> dict:
        """Train to ``max_epoch`` (or ``max_steps``); return the final model.state dict."""
        self.ctx, self.device = init_distributed(self.use_gpu)
        writer = None
        try:
            if resume and pretrained:
                raise ConfigError("--resume and --pretrained exclude each other: a resumed run has its own weights")
            checkpoint = self.model_dir / "last_model" / TRAINING_FILE
            if resume and self.ctx.rank == 0:
                recover_model_dir(checkpoint.parent)
            self.ctx.barrier()
            if resume and not checkpoint.is_file():  # before the slow set-up
                raise ConfigError(f"--resume: nothing to resume: {checkpoint} not found")
            self._build()
            self.global_step, self.best_eer, self.last_metrics = 0, None, {}
            self._excluded, self._warned_no_trials, self.last_state = None, False, {}
            start_epoch, skip, rng, head_loaded = 1, 0, None, False
            if resume:
                start_epoch, skip, rng = self._resume()
            elif pretrained:
                head_loaded = self._load_pretrained(pretrained, allow_partial)
            if self.teacher is not None and not resume and not head_loaded:
                self._init_head_from_teacher()
            # Different seeds per rank after the weights are equal: distinct SpecAugment/dropout draws.
            seed_everything(self.train_conf["seed"] + self.ctx.rank)
            self._wrap()
            if self.ctx.is_main:
                from visualdl import LogWriter  # imported late: slow, and only rank 0 writes logs
                self.log_dir.mkdir(parents=True, exist_ok=True)
                writer = LogWriter(logdir=str(self.log_dir))
            self._log(f"training {self.config['model_conf']['model']} on {self.device} x{self.ctx.world_size}: "
                      f"{len(self.dataset)} samples, {self.num_classes} classes, {self.steps_per_epoch} steps/epoch, "
                      f"{sum(p.numel() for p in self.graph.parameters())} parameters -> {self.model_dir}")
            # Compiling happens at the first training and evaluation calls, anywhere in the run.
            with compile_errors_explained(self.train_conf["use_compile"]):
                return self._run(start_epoch, skip, rng, writer)
        finally:
            if writer is not None:
                writer.close()
            shutdown_distributed()

    def _stop_step(self):
        max_steps = self.train_conf["max_steps"]
        return max_steps if max_steps is not None else math.inf

    def _run(self, start_epoch, skip, rng, writer) -> dict:
        max_epoch, stop_step = self.train_conf["max_epoch"], self._stop_step()
        if self.global_step >= stop_step or start_epoch > max_epoch:
            self._log(f"nothing to do: step {self.global_step}, max_steps {self.train_conf['max_steps']}, "
                      f"max_epoch {max_epoch}")
            return self._metrics_state(start_epoch - 1, len(self.loader))
        if rng is not None:
            set_rng_state(rng, self.device)
        trace = self._open_trace()
        try:
            for epoch in range(start_epoch, max_epoch + 1):
                self._apply_curation(epoch)
                epoch_sampler(self.loader).set_epoch(epoch)  # the dataset's epoch too: crops and augmentation
                skip_now = skip if epoch == start_epoch else 0
                # A loader's iterator draws its worker seed from the global RNG, but not on every
                # epoch (persistent workers) nor for a resumed epoch's loader alike: keep that draw
                # out of the stream that SpecAugment and dropout use, so a resume replays it exactly.
                with torch.random.fork_rng(devices=[]):
                    batches = iter(loader_from_batch(self.loader, skip_now))
                completed = self._train_epoch(epoch, batches, skip_now, len(self.loader), writer, trace)
                if completed:
                    self._end_epoch(epoch, writer)
                if self.global_step >= self._stop_step():
                    self._log(f"reached train_conf.max_steps={self.train_conf['max_steps']} in epoch {epoch}")
                    break
        finally:
            if trace is not None:
                trace.close()
        self._log(f"done at step {self.global_step}; models in {self.model_dir}")
        return self.last_state

    def _open_trace(self):
        directory = os.environ.get(TRACE_ENV)
        if not directory:
            return None
        Path(directory).mkdir(parents=True, exist_ok=True)
        # Line-buffered: the trace of a killed run must hold every step it took.
        return open(Path(directory) / f"rank{self.ctx.rank}.tsv", "a", encoding="utf-8", buffering=1)

    def _train_epoch(self, epoch, batches, start_batch, epoch_batches, writer, trace) -> bool:
        """Train one epoch from batch ``start_batch``; False when max_steps stopped it short."""
        train_conf = self.train_conf
        stop_step, save_every = self._stop_step(), train_conf["save_every_steps"]
        amp = train_conf["amp"]
        self.graph.train()
        window_loss, window_correct, window_count, window_steps = 0.0, 0, 0, 0
        bar = tqdm(total=epoch_batches, initial=start_batch, disable=not self.ctx.is_main,
                   desc=f"epoch {epoch}/{train_conf['max_epoch']}", dynamic_ncols=True)
        try:
            for batch_index, (waveforms, lengths, labels, indices) in enumerate(batches, start=start_batch):
                if trace is not None:
                    trace.write(f"{self.global_step + 1}\t{','.join(str(int(i)) for i in indices)}\n")
                waveforms = waveforms.to(self.device, non_blocking=True)
                lengths = lengths.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
                teacher = None if self.teacher is None else self.teacher[indices].to(self.device, non_blocking=True)
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=amp):
                    loss, outputs = self.model(waveforms, lengths, labels, teacher)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if train_conf["grad_clip"]:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.graph.parameters(), train_conf["grad_clip"])
                self.scaler.step(self.optimizer)
                self.scaler.update()
                with warnings.catch_warnings():
                    # An fp16 step the scaler skipped (inf gradients) still counts: the schedules
                    # follow the step count, so a resume lands on the same LR.
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                    self.scheduler.step()
                self.global_step += 1
                if self.margin_scheduler is not None:
                    self.margin_scheduler.step(self.global_step)

                window_loss += loss.detach().float()
                window_correct += (outputs.detach().argmax(dim=1) == labels).sum()
                window_count += labels.numel()
                window_steps += 1
                batches_done = batch_index + 1
                last_of_epoch = batches_done == epoch_batches
                if window_steps == train_conf["log_interval"] or last_of_epoch:
                    mean_loss = float(window_loss) / window_steps
                    if not math.isfinite(mean_loss):
                        raise MVectorError(f"training diverged: loss is {mean_loss} at step {self.global_step} "
                                           f"(lower optimizer_conf.optimizer_args.lr or set train_conf.grad_clip)")
                    self._log_scalars(writer, bar, mean_loss, float(window_correct) / window_count)
                    window_loss, window_correct, window_count, window_steps = 0.0, 0, 0, 0
                bar.update(1)
                if last_of_epoch:
                    break  # the end of the epoch saves
                reached_stop = self.global_step >= stop_step
                if reached_stop or (save_every and self.global_step % save_every == 0):
                    self._save(["last_model"], epoch, batches_done)
                if reached_stop:
                    return False
        finally:
            bar.close()
        return True

    def _log_scalars(self, writer, bar, mean_loss, accuracy) -> None:
        if not self.ctx.is_main:
            return
        lr = self.optimizer.param_groups[0]["lr"]
        margin = self.loss.margin if isinstance(self.loss, MarginLoss) else None
        values = {"loss": mean_loss, "accuracy": accuracy, "lr": lr}
        if margin is not None:
            values["margin"] = margin
        for name, value in values.items():
            writer.add_scalar(tag=f"train/{name}", step=self.global_step, value=value)
        bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{accuracy:.3f}", lr=f"{lr:.2e}",
                        **({"margin": f"{margin:.3f}"} if margin is not None else {}), refresh=False)

    def _end_epoch(self, epoch, writer) -> None:
        names = [f"epoch_{epoch}", "last_model"]
        if epoch % self.train_conf["eval_every_epochs"] == 0:
            metrics = {}
            if self.ctx.is_main:
                metrics = self._evaluate(epoch)
            self.ctx.barrier()
            if metrics:
                self.last_metrics = metrics
                for name in ("eer", "min_dcf", "threshold"):
                    writer.add_scalar(tag=f"test/{name}", step=epoch, value=float(metrics[name]))
                if self.best_eer is None or metrics["eer"] < self.best_eer:
                    self.best_eer = metrics["eer"]
                    names.append("best_model")
        # Only rank 0 knows the metrics; the others' names only decide nothing (rank 0 writes).
        self._save(names, epoch, len(self.loader), epoch_complete=True)
        self._log(f"epoch {epoch} done at step {self.global_step}; saved {', '.join(names)}")
        if self.ctx.is_main:
            self._prune_epochs()

    def _prune_epochs(self) -> None:
        """Keep the newest ``train_conf.keep_epochs`` epoch_N/ checkpoints (an 80 MB model a epoch adds up)."""
        keep = self.train_conf["keep_epochs"]
        if keep is None:
            return
        epochs = sorted((int(p.name.split("_", 1)[1]), p) for p in self.model_dir.glob("epoch_*")
                        if p.is_dir() and p.name.split("_", 1)[1].isdigit())
        for _, old in epochs[:max(0, len(epochs) - keep)]:
            shutil.rmtree(old)
        if len(epochs) > keep:
            self._log(f"removed {len(epochs) - keep} older epoch checkpoint(s); train_conf.keep_epochs={keep}")
