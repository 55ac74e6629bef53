"""Training data: the list reader, the random-crop dataset, batching and the sampler.

An epoch visits every utterance ``ceil(duration / max_duration)`` times, each visit a random crop
of at most ``max_duration``: a 15 s recording contributes as much audio as five 3 s clips. Crop
offsets and speed perturbation are drawn from a generator seeded by (seed, epoch, utterance, visit),
so the same epoch gives the same samples in any worker, on any DDP rank and after a resume.

The sampler runs in the main process and hands workers complete sample keys
``(utterance, visit, epoch)``: persistent workers hold stale copies of the dataset, so nothing a
worker computes may depend on ``set_epoch`` or ``set_excluded`` having reached it.
"""

import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mvector.audio import load_audio
from mvector.audio.spec import AudioSpec
from mvector.training.augment import DEFAULT_SPEEDS
from mvector.training.corpus import probe_durations
from mvector.errors import AudioError, ConfigError
from mvector.lists import read_data_list

logger = logging.getLogger(__name__)

INT16_SCALE = 32768.0
PRELOAD_DTYPES = ("int16", "float32")


class TrainUtterance(NamedTuple):
    path: str
    label: int
    duration: float


class SpeakerCropDataset(Dataset):
    """Random crops of the utterances in a training list, with labels and utterance indices.

    ``dataset[i]`` -> ``(waveform float32 [N], label, utterance_index)``, speed-perturbed by
    ``speed_perturb`` (``mvector.training.augment.SpeedPerturb``) when given; the rest of the waveform
    augmentation runs on the training device, batched. ``utterances`` lists the kept utterances
    (``TrainUtterance(path, label, duration)``); utterances shorter than ``min_duration`` are left
    out (``num_too_short``), as are, when durations must be probed or audio preloaded, unreadable
    files (``num_unreadable``). ``num_speakers`` is derived from the
    list's labels (times the speed classes with ``speed_perturb_as_classes``).
    ``preload`` (None: ``dataset_conf['preload']``) decodes every file once into memory, as int16
    (half the memory) or float32 (``preload_dtype``).
    """

    def __init__(self, list_path, dataset_conf: dict, speed_perturb=None, preload=None, seed: int = 0,
                 preload_dtype: str = "int16", num_threads: int | None = None):
        self.list_path = str(list_path)
        self.speed_perturb = speed_perturb
        self.seed = int(seed) % (1 << 64)
        spec = AudioSpec.from_dataset_conf(dataset_conf)
        self.sample_rate = spec.sample_rate
        self.min_duration = float(dataset_conf["min_duration"])
        self.max_duration = float(dataset_conf["max_duration"])
        if not 0 < self.min_duration <= self.max_duration:
            raise ConfigError(f"dataset_conf: need 0 < min_duration <= max_duration, got "
                              f"{self.min_duration} and {self.max_duration}")
        self.target_db, self.do_vad = spec.target_db, spec.vad
        self.speed_as_classes = bool(dataset_conf["speed_perturb_as_classes"])
        if preload_dtype not in PRELOAD_DTYPES:
            raise ConfigError(f"preload_dtype must be one of {', '.join(PRELOAD_DTYPES)}, got {preload_dtype!r}")
        self.preload_dtype = preload_dtype
        # Decoding is CPU-bound: one thread per core (the decoders release the GIL).
        self.num_threads = num_threads or os.cpu_count() or 4

        entries = read_data_list(list_path)
        if not entries:
            raise ConfigError(f"data list {list_path} has no entries")
        self.num_base_speakers = max(label for _, label, _ in entries) + 1
        if len({label for _, label, _ in entries}) < 2:
            raise ConfigError(f"data list {list_path}: every utterance has label {entries[0][1]}; training "
                              f"tells speakers apart and needs at least two (create_data.py refuses such a set)")
        speed_classes = speed_perturb.num_speed_classes if speed_perturb is not None else 1 + len(DEFAULT_SPEEDS)
        self.num_speakers = self.num_base_speakers * (speed_classes if self.speed_as_classes else 1)

        entries, self.num_unreadable = self._complete_durations(entries)
        kept = [TrainUtterance(p, label, d) for p, label, d in entries if d >= self.min_duration]
        self.num_too_short = len(entries) - len(kept)
        self._audio = None
        self._gains = None
        if dataset_conf.get("preload", False) if preload is None else preload:
            kept = self._preload(kept)
        if not kept:
            raise ConfigError(f"data list {list_path}: no utterance of at least min_duration "
                              f"{self.min_duration} s ({self.num_too_short} shorter, {self.num_unreadable} unreadable)")
        if self.num_too_short:
            logger.info("%s: left out %d utterance(s) shorter than min_duration %.2f s",
                        list_path, self.num_too_short, self.min_duration)
        self.utterances = kept
        self.visits = np.array([max(1, math.ceil(u.duration / self.max_duration - 1e-9)) for u in kept])
        self.epoch = 0
        self.set_excluded([])

    # -------------------------------------------------------------- construction helpers

    def _complete_durations(self, entries):
        """Probe the durations a 2-column list lacks; unreadable files are dropped and counted."""
        missing = [p for p, _, d in entries if d is None]
        if not missing:
            return entries, 0
        durations, skipped = probe_durations(missing, self.num_threads)
        if skipped:
            logger.warning("%s: skipped %d unreadable file(s), e.g. %s (%s)", self.list_path, len(skipped),
                           skipped[0][0], skipped[0][1])
        complete = [(p, label, d if d is not None else durations[p]) for p, label, d in entries
                    if d is not None or p in durations]
        return complete, len(entries) - len(complete)

    def _decode(self, path: str) -> np.ndarray:
        return load_audio(path, target_sample_rate=self.sample_rate, vad=self.do_vad)

    def _preload(self, utterances):
        """Decode everything once in threads; keep raw samples and each utterance's dB gain."""

        def decode(utterance):
            try:
                wav = self._decode(utterance.path)
            except AudioError as error:
                return None, None, str(error)
            gain = _db_gain(wav, self.target_db) if self.target_db is not None else 1.0
            if self.preload_dtype == "int16":
                wav = np.round(np.clip(wav, -1.0, 1.0 - 1.0 / INT16_SCALE) * INT16_SCALE).astype(np.int16)
            return wav, gain, None

        started = time.monotonic()
        logger.info("%s: preloading %d files with %d threads", self.list_path, len(utterances), self.num_threads)
        with ThreadPoolExecutor(max_workers=self.num_threads) as pool:
            decoded = list(pool.map(decode, utterances))
        logger.info("%s: preloaded %.2f h in %.0f s (%.0f MB)", self.list_path,
                    sum(len(w) for w, _, _ in decoded if w is not None) / self.sample_rate / 3600,
                    time.monotonic() - started, sum(w.nbytes for w, _, _ in decoded if w is not None) / 1e6)
        failures = [(u.path, error) for u, (_, _, error) in zip(utterances, decoded) if error is not None]
        if failures:
            logger.warning("%s: skipped %d unreadable file(s) while preloading, e.g. %s",
                           self.list_path, len(failures), failures[0][1])
        self.num_unreadable += len(failures)
        self._audio = [wav for wav, _, error in decoded if error is None]
        self._gains = [gain for _, gain, error in decoded if error is None]
        return [u for u, (_, _, error) in zip(utterances, decoded) if error is None]

    # -------------------------------------------------------------- epoch state (main process)

    def set_epoch(self, epoch: int) -> None:
        """Crops and augmentation of ``dataset[i]`` now come from epoch ``epoch``'s draws."""
        self.epoch = int(epoch)

    def set_excluded(self, utterance_indices) -> None:
        """Leave these utterances (indices into ``utterances``) out of the epoch; [] keeps all."""
        excluded = np.zeros(len(self.utterances), dtype=bool)
        indices = np.asarray(list(utterance_indices), dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self.utterances)):
            raise ConfigError(f"set_excluded: utterance indices must be in [0, {len(self.utterances)}), "
                              f"got {indices.min()}..{indices.max()}")
        excluded[indices] = True
        kept = np.flatnonzero(~excluded)
        self._item_utterance = np.repeat(kept, self.visits[kept])
        # The visit number of each item: its position among its utterance's repeats.
        starts = np.cumsum(self.visits[kept]) - self.visits[kept]
        self._item_visit = np.arange(len(self._item_utterance)) - np.repeat(starts, self.visits[kept])

    def __len__(self) -> int:
        return len(self._item_utterance)

    def item_labels(self) -> np.ndarray:
        """The speaker label of every item this epoch (base labels, before any speed classes)."""
        return np.array([self.utterances[u].label for u in self._item_utterance], dtype=np.int64)

    def item_key(self, index: int) -> tuple:
        """The full description ``(utterance, visit, epoch)`` of item ``index`` this epoch."""
        return int(self._item_utterance[index]), int(self._item_visit[index]), self.epoch

    # -------------------------------------------------------------- samples (any process)

    def __getitem__(self, index):
        utterance, visit, epoch = index if isinstance(index, tuple) else self.item_key(index)
        rng = np.random.default_rng([self.seed, epoch, utterance, visit])
        wav = self._crop(utterance, visit, rng)
        label = self.utterances[utterance].label
        if self.speed_perturb is not None:
            wav, label = self.speed_perturb(wav, label, rng,
                                            num_base_speakers=self.num_base_speakers if self.speed_as_classes else None)
            # A slowed-down crop grows past max_duration; keep batches within the configured size.
            wav = wav[:self.max_samples]
        return wav, label, utterance

    @property
    def max_samples(self) -> int:
        return int(round(self.max_duration * self.sample_rate))

    def waveform(self, utterance: int) -> np.ndarray:
        """The whole utterance, float32 at ``sample_rate``, dB-normalised when configured."""
        if self._audio is not None:
            wav = self._audio[utterance]
            if wav.dtype == np.int16:
                wav = np.multiply(wav, np.float32(self._gains[utterance] / INT16_SCALE), dtype=np.float32)
            elif self._gains[utterance] != 1.0:
                wav = np.multiply(wav, np.float32(self._gains[utterance]), dtype=np.float32)
            return wav
        wav = self._decode(self.utterances[utterance].path)
        return np.multiply(wav, np.float32(_db_gain(wav, self.target_db)), dtype=np.float32) \
            if self.target_db is not None else wav

    def _crop(self, utterance: int, visit: int, rng: np.random.Generator) -> np.ndarray:
        """At most max_duration from visit ``visit``'s share of the utterance: visits spread over it."""
        wav = self.waveform(utterance)
        length = min(len(wav), self.max_samples)
        slack = len(wav) - length
        visits = int(self.visits[utterance])
        start = min(slack, int((visit + rng.random()) / visits * (slack + 1)))
        return np.array(wav[start:start + length], dtype=np.float32)


def _db_gain(wav: np.ndarray, target_db: float) -> float:
    """The gain that brings ``wav``'s RMS to ``target_db`` dBFS (as audio.normalize_db computes it)."""
    rms = math.sqrt(float(np.mean(np.square(wav, dtype=np.float64)))) if len(wav) else 0.0
    return 10.0 ** (target_db / 20.0) / rms if rms > 0 else 1.0


def collate_waveforms(batch):
    """``[(wav, label, utterance), ...]`` -> ``(waveforms[B, N] zero-padded, lengths[B], labels[B],
    utterance_indices[B])``."""
    lengths = torch.tensor([len(wav) for wav, _, _ in batch], dtype=torch.long)
    waveforms = torch.zeros(len(batch), int(lengths.max()) if len(batch) else 0, dtype=torch.float32)
    for row, (wav, _, _) in enumerate(batch):
        waveforms[row, :len(wav)] = torch.from_numpy(np.asarray(wav, dtype=np.float32))
    labels = torch.tensor([label for _, label, _ in batch], dtype=torch.long)
    utterances = torch.tensor([utterance for _, _, utterance in batch], dtype=torch.long)
    return waveforms, lengths, labels, utterances


class CropSampler(Sampler):
    """Shuffles the dataset's items per (seed, epoch) and yields their full sample keys.

    Split over ``num_replicas`` ranks like DistributedSampler: the shuffled order is padded by
    wrapping to a multiple of the rank count, and rank r takes every num_replicas-th item from r,
    so all ranks run the same number of batches. Call ``set_epoch`` before each epoch (it also
    sets the dataset's epoch).
    """

    def __init__(self, dataset: SpeakerCropDataset, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True):
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"CropSampler: rank {rank} is not in [0, {num_replicas})")
        self.dataset = dataset
        self.seed = int(seed) % (1 << 64)
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.num_replicas)

    def __iter__(self):
        total = len(self.dataset)
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(total) if self.shuffle
                 else np.arange(total))
        padded = len(self) * self.num_replicas
        order = np.resize(order, padded)  # repeats from the start to fill the last round
        for index in order[self.rank::self.num_replicas]:
            yield self.dataset.item_key(int(index))


class SpeakerBatchSampler:
    """Batches of ``speakers`` different speakers x ``utterances`` crops each (P x K), for the losses
    that compare a speaker's utterances with each other (GE2E, the plain triplet loss).

    Each epoch (a function of seed and epoch alone, so a resumed run replays it) every speaker's
    items are shuffled and cut into groups of K (a speaker with fewer than K items repeats some);
    the groups, shuffled, fill batches of P groups of distinct speakers. Under DDP rank r takes every
    num_replicas-th batch, the count cut to a multiple of the ranks: disjoint batches, the same
    number on every rank. Call ``set_epoch`` before each epoch (it also sets the dataset's).
    """

    def __init__(self, dataset: SpeakerCropDataset, speakers: int, utterances: int, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0):
        if speakers < 2 or utterances < 2:
            raise ConfigError(f"P x K batches need at least 2 speakers of at least 2 utterances, got {speakers} x "
                              f"{utterances}")
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"SpeakerBatchSampler: rank {rank} is not in [0, {num_replicas})")
        self.dataset, self.speakers, self.utterances = dataset, speakers, utterances
        self.seed, self.num_replicas, self.rank = int(seed) % (1 << 64), num_replicas, rank
        self.epoch = 0
        self._plan = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.dataset.set_epoch(epoch)
        self._plan = None

    def _batches(self) -> list:
        if self._plan is not None and self._plan[0] == (self.epoch, len(self.dataset)):
            return self._plan[1]
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        labels = self.dataset.item_labels()
        groups = []
        for label in np.unique(labels):
            items = rng.permutation(np.flatnonzero(labels == label))
            count = max(1, len(items) // self.utterances)
            groups += [(int(label), chunk) for chunk in np.resize(items, count * self.utterances).reshape(count, -1)]
        if len({label for label, _ in groups}) < self.speakers:
            raise ConfigError(f"dataset_conf.speakers_per_batch is {self.speakers}, but the training list holds "
                              f"{len({label for label, _ in groups})} speakers")
        pending = [groups[i] for i in rng.permutation(len(groups))]
        # The same count every epoch (the resume arithmetic counts steps per epoch).
        target = len(groups) // self.speakers
        batches = []
        while len(pending) >= self.speakers:
            chosen, seen, rest = [], set(), []
            for label, chunk in pending:
                if len(chosen) < self.speakers and label not in seen:
                    chosen.append(chunk)
                    seen.add(label)
                else:
                    rest.append((label, chunk))
            if len(chosen) < self.speakers:
                break  # what is left holds too few speakers for another batch
            batches.append([self.dataset.item_key(int(i)) for chunk in chosen for i in chunk])
            pending = rest
        by_label = {}
        for label, chunk in groups:
            by_label.setdefault(label, []).append(chunk)
        labels_left = sorted(by_label)
        while len(batches) < target:  # the last groups shared speakers: draw the rest from all groups
            chosen = [by_label[label][rng.integers(len(by_label[label]))]
                      for label in rng.choice(labels_left, self.speakers, replace=False)]
            batches.append([self.dataset.item_key(int(i)) for chunk in chosen for i in chunk])
        batches = batches[:target]
        batches = batches[: len(batches) - len(batches) % self.num_replicas]
        self._plan = ((self.epoch, len(self.dataset)), batches)
        return batches

    def __len__(self) -> int:
        return len(self._batches()) // self.num_replicas

    def __iter__(self):
        yield from self._batches()[self.rank::self.num_replicas]


def epoch_sampler(loader: DataLoader):
    """The object of ``loader`` whose ``set_epoch`` starts an epoch: its batch sampler for P x K
    batches, else its sampler."""
    return loader.batch_sampler if isinstance(loader.batch_sampler, SpeakerBatchSampler) else loader.sampler


def build_train_loader(dataset: SpeakerCropDataset, batch_size: int, num_workers: int, seed: int,
                       distributed: bool = False, drop_last: bool = True, speakers_per_batch: int | None = None,
                       utterances_per_speaker: int | None = None) -> DataLoader:
    """A shuffling DataLoader of ``collate_waveforms`` batches; call ``epoch_sampler(loader).set_epoch(e)``
    each epoch. ``distributed`` splits the items over the initialised torch.distributed ranks.
    ``speakers_per_batch`` x ``utterances_per_speaker``: P x K batches (SpeakerBatchSampler)."""
    if batch_size < 1 or num_workers < 0:
        raise ConfigError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
    num_replicas, rank = 1, 0
    if distributed:
        if not torch.distributed.is_initialized():
            raise ConfigError("build_train_loader(distributed=True) needs an initialised torch.distributed group")
        num_replicas, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    if speakers_per_batch is not None:
        batches = SpeakerBatchSampler(dataset, speakers_per_batch, utterances_per_speaker, seed=seed,
                                      num_replicas=num_replicas, rank=rank)
        return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate_waveforms,
                          pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0)
    sampler = CropSampler(dataset, seed=seed, num_replicas=num_replicas, rank=rank)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_waveforms, drop_last=drop_last, pin_memory=torch.cuda.is_available(),
                      persistent_workers=num_workers > 0)
