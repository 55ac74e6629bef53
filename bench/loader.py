"""Benchmark: how many training crops per second the trainer's data loader delivers.

    python bench/loader.py [--config configs/ecapa_tdnn.yml] [--list dataset/train_list.txt]
                           [--workers 1 2] [--batch-size 128] [--batches 40] [--no-augment]

The loader ``MVectorTrainer`` builds (``SpeakerCropDataset`` with the audio preloaded and the
config's speed perturbation, ``build_train_loader``), iterated on its own: random crops of
``dataset_conf.max_duration``, speed-perturbed as the config's augmentation file sets it, collated
into padded batches. Reverberation, noise, volume, features and SpecAugment run batched on the
training device (``bench/train_gpu.py`` times them in its step) and are not part of it. A GPU step
that consumes more crops per second than this figure waits for data, so compare it with
``bench/train_gpu.py``'s samples_per_s on the machine that trains.

One figure per line, the value last: ``loader <speed-perturbed|plain> w<workers> <metric> <value>``:
  crops_per_s             crops delivered per second over --batches batches after two warm-up batches
  crops_per_s_per_worker  the same divided by the worker count (0 workers counts as one)
"""
import argparse
import sys
import time
from pathlib import Path

from mvector.training.augment import build_augmentation
from mvector.config import load_config
from mvector.training.data import SpeakerCropDataset, build_train_loader
from peer import figure


ROOT = Path(__file__).resolve().parents[1]
WARMUP_BATCHES = 2


def measure(dataset, batch_size: int, workers: int, batches: int) -> float:
    """Crops per second over ``batches`` batches, after the workers have started and warmed up."""
    loader = build_train_loader(dataset, batch_size, workers, seed=0)
    loader.sampler.set_epoch(0)
    iterator = iter(loader)
    for _ in range(WARMUP_BATCHES):
        next(iterator)
    start = time.perf_counter()
    crops = 0
    for _ in range(batches):
        waveforms, _, _, _ = next(iterator)
        crops += len(waveforms)
    elapsed = time.perf_counter() - start
    del iterator
    return crops / elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "ecapa_tdnn.yml"),
                        help="training config whose dataset_conf and augmentation file to use")
    parser.add_argument("--list", default=str(ROOT / "dataset" / "train_list.txt"),
                        help="training list (path<TAB>label), written by create_data.py")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="loader worker counts to time")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per worker count")
    parser.add_argument("--no-augment", action="store_true", help="crops only, no speed perturbation")
    args = parser.parse_args(argv)

    config = load_config(args.config)
    dataset_conf = config["dataset_conf"]
    aug_path = None if args.no_augment else dataset_conf["aug_conf_path"]
    if aug_path is not None and not Path(aug_path).is_absolute():
        aug_path = str(ROOT / aug_path)  # configs name it relative to the repository root
    speed_perturb = build_augmentation(aug_path, dataset_conf["sample_rate"]).speed
    dataset = SpeakerCropDataset(args.list, dataset_conf, speed_perturb=speed_perturb, preload=True, seed=0)
    kind = "plain" if speed_perturb is None else "speed-perturbed"
    for workers in args.workers:
        rate = measure(dataset, args.batch_size, workers, args.batches)
        figure("loader", kind, f"w{workers}", "crops_per_s", f"{rate:.0f}")
        figure("loader", kind, f"w{workers}", "crops_per_s_per_worker", f"{rate / max(workers, 1):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
