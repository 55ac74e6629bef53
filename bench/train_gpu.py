"""Benchmark: training throughput and peak memory on one GPU, per backbone and batch size.

    python bench/train_gpu.py [--backbones CAMPPlus ERes2Net] [--batch-sizes 128 64] [--steps 30]
                              [--warmup 5] [--num-classes 1000] [--compile]
                              [--peer-python /path/to/peer-venv/bin/python | --peer-wheel WHEEL [WHEEL ...]]
    python bench/train_gpu.py --device cpu --steps 2 --warmup 1 --batch-sizes 4 --backbones TDNN  # smoke run

Our training step as ``MVectorTrainer`` runs it: 3 s waveform crops copied to the device, the
waveform augmentation that runs there (reverberation, noise, volume: configs/augmentation.yml),
Fbank on the device, SpecAugment, backbone, the config's head (Cosine) and loss (AAMLoss), all
under bf16 autocast, backward, gradient clipping at the config's grad_clip, the config's optimizer
(Adam). Batches come from a synthetic in-memory loader (pre-built batches of voice-like audio in
pinned host memory); what the real loader (crops and speed perturbation on CPU workers) delivers
per second is ``bench/loader.py``'s figure, to set beside samples_per_s.

One figure per line, the value last: ``<backbone> <ours|peer> b<batch> <metric> <value>``:
  samples_per_s     training crops per second over --steps steps after --warmup steps
  peak_gpu_mem_GB   torch.cuda.max_memory_allocated over warm-up and timed steps
  ratio_vs_peer     our samples_per_s / the reference's, same GPU, same run
``--peer-python`` runs bench/peer_train.py under a venv holding the reference toolkit (PyPI
``mvector==1.1.7``); ``--peer-wheel`` runs it under this interpreter with the given wheels (the
reference's, plus loguru's if this interpreter lacks it) in front of its path, for a GPU machine
that has torch but no network to install the reference. The reference's step: its model and
classifier, AAM loss, Adam, fp16 autocast with a GradScaler, on features precomputed (here with
our Kaldi-compatible Fbank, as its loader would hand them over).
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mvector.config import load_config
from mvector.embedder import build_featurizer
from mvector.training.augment import build_augmentation
from mvector.training.graph import build_train_graph
from peer import backbone_configs, figure, run_peer_command
from synthetic_voice import voice_like


ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000
CROP_SECONDS = 3.0
POOL_SIZE = 256  # distinct utterances that batches are drawn from
DISTINCT_BATCHES = 4
AMP_DTYPE = torch.bfloat16
PEER_SCRIPT = Path(__file__).resolve().parent / "peer_train.py"


def make_pool(seed: int = 0) -> torch.Tensor:
    """``[POOL_SIZE, samples]`` voice-like crops, each a different voice."""
    return torch.from_numpy(np.stack([voice_like(CROP_SECONDS, SAMPLE_RATE, seed=seed + i) for i in range(POOL_SIZE)]))


class SyntheticWaveLoader:
    """Pre-built ``(waveforms, lengths, labels)`` batches in host memory (pinned for CUDA), cycled
    for ever: a step's data costs the same host-to-device copy as in the trainer, and nothing else."""

    def __init__(self, pool: torch.Tensor, batch_size: int, num_classes: int, device: torch.device, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        pin = device.type == "cuda"
        self.batches = []
        for _ in range(DISTINCT_BATCHES):
            waves = pool[torch.randint(len(pool), (batch_size,), generator=generator)]
            lengths = torch.full((batch_size,), pool.shape[1], dtype=torch.long)
            labels = torch.randint(num_classes, (batch_size,), generator=generator)
            self.batches.append(tuple(t.pin_memory() if pin else t for t in (waves, lengths, labels)))
        self.index = 0

    def __next__(self):
        batch = self.batches[self.index % DISTINCT_BATCHES]
        self.index += 1
        return batch


class OurTrainStep:
    """The body of ``MVectorTrainer._train_epoch`` for one batch, on a graph built like its ``_build``."""

    def __init__(self, config: dict, num_classes: int, device: torch.device, compile_backbone: bool):
        torch.manual_seed(0)
        opt_conf = config["optimizer_conf"]
        # The config names augmentation.yml relative to the repository root.
        augmentation = build_augmentation(str(ROOT / config["dataset_conf"]["aug_conf_path"]), SAMPLE_RATE)
        self.graph = build_train_graph(config, num_classes, augmentation).to(device).train()
        backbone = self.graph.backbone
        if compile_backbone:
            backbone.compile()
        self.optimizer = getattr(torch.optim, opt_conf["optimizer"])(self.graph.parameters(), **opt_conf["optimizer_args"])
        self.grad_clip = config["train_conf"]["grad_clip"]
        self.device = device

    def __call__(self, waveforms, lengths, labels):
        waveforms = waveforms.to(self.device, non_blocking=True)
        lengths = lengths.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=AMP_DTYPE):
            loss, _ = self.graph(waveforms, lengths, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # bf16 needs no GradScaler: the trainer's is disabled for it
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.graph.parameters(), self.grad_clip)
        self.optimizer.step()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_ours(config, pool, batch_size, args, device) -> dict:
    step = OurTrainStep(config, args.num_classes, device, args.compile)
    loader = SyntheticWaveLoader(pool, batch_size, args.num_classes, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step(*next(loader))
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step(*next(loader))
    synchronize(device)
    result = {"samples_per_s": batch_size * args.steps / (time.perf_counter() - start)}
    if device.type == "cuda":
        result["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return result


def peer_features(config, pool) -> np.ndarray:
    """The pool's features as the reference's loader would deliver them: Kaldi Fbank, mean-normalised."""
    featurizer = build_featurizer(config).eval()
    with torch.inference_mode():
        return featurizer(pool)[0].numpy()


def run_peer(args, config_name, features, device) -> dict:
    """The reference's figures ({batch: dict}), or {'error': why there are none}."""
    python = args.peer_python or sys.executable
    if not Path(python).is_file():
        return {"error": f"peer interpreter not found: {python}"}
    wheels = [str(Path(w).resolve()) for w in args.peer_wheel or []]
    missing = [w for w in wheels if not Path(w).is_file()]
    if missing:
        return {"error": f"peer wheel not found: {', '.join(missing)}"}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "features.npy"
        np.save(path, features)
        command = [python, "-I", str(PEER_SCRIPT), config_name, str(path), "--batch-sizes",
                   *map(str, args.batch_sizes), "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--num-classes", str(args.num_classes), "--device", str(device)]
        for wheel in wheels:
            command += ["--path", wheel]
        return run_peer_command(command, folder)


def report(name, side, batch_size, result):
    if "error" in result:
        print(f"note: {name} {side} b{batch_size}: {result['error']}", file=sys.stderr)
        return
    figure(name, side, f"b{batch_size}", "samples_per_s", f"{result['samples_per_s']:.1f}")
    if "peak_mem_gb" in result:
        figure(name, side, f"b{batch_size}", "peak_gpu_mem_GB", f"{result['peak_mem_gb']:.2f}")


def bench_backbone(name, config_path, pool, args, device):
    config = load_config(config_path)
    ours = {}
    for batch_size in args.batch_sizes:
        try:
            ours[batch_size] = measure_ours(config, pool, batch_size, args, device)
        except torch.OutOfMemoryError:
            ours[batch_size] = {"error": "out of memory"}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        report(name, "ours", batch_size, ours[batch_size])
    if not (args.peer_python or args.peer_wheel):
        return
    peer = run_peer(args, config_path.stem, peer_features(config, pool), device)
    if "error" in peer:
        print(f"note: {name}: no peer figures: {peer['error']}", file=sys.stderr)
        return
    for batch_size in args.batch_sizes:
        theirs = peer.get(str(batch_size), {"error": "missing from the peer's output"})
        report(name, "peer", batch_size, theirs)
        if "error" not in theirs and "error" not in ours[batch_size]:
            ratio = ours[batch_size]["samples_per_s"] / theirs["samples_per_s"]
            figure(name, "ours", f"b{batch_size}", "ratio_vs_peer", f"{ratio:.2f}")


def main():
    configs = backbone_configs()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(configs), choices=list(configs))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per backbone and batch size")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (cuDNN autotuning, allocator)")
    parser.add_argument("--num-classes", type=int, default=1000, help="speakers in the classification head")
    parser.add_argument("--device", default="cuda", help="'cuda', 'cuda:N', or 'cpu' for a smoke run of the logic")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone (train_conf.use_compile)")
    parser.add_argument("--peer-python", help="interpreter of a venv with the reference toolkit (mvector==1.1.7)")
    parser.add_argument("--peer-wheel", nargs="+", help="wheels of the reference (and loguru) for this interpreter")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.num_classes < 2 or min(args.batch_sizes) < 1:
        parser.error("need --steps >= 1, --warmup >= 0, --num-classes >= 2 and batch sizes >= 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"bench/train_gpu.py measures training on a GPU, but torch {torch.__version__} sees no CUDA device "
                 f"(torch.cuda.is_available() is False; CUDA build: {torch.version.cuda}). "
                 f"For a CPU smoke run of its logic: --device cpu --steps 2 --warmup 1 --batch-sizes 4")
    if device.type == "cuda":
        figure("device", torch.cuda.get_device_name(device).replace(" ", "_"))
    pool = make_pool()
    for name in args.backbones:
        bench_backbone(name, configs[name], pool, args, device)


if __name__ == "__main__":
    main()
