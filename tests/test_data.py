"""mvector/training/data.py: list reading, crops per epoch, determinism, exclusion, speed classes, collate, preload, loader."""
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from mvector.training.augment import SpeedPerturb, validate_augmentation_config
from mvector.config import SCHEMA, validate
from mvector.lists import read_data_list
from mvector.training.data import CropSampler, SpeakerCropDataset, build_train_loader, collate_waveforms
from mvector.errors import ConfigError

pytestmark = pytest.mark.unit

SR = 16000
# (seconds, label): one long recording, ordinary clips, and one too short to train on.
UTTERANCES = [(12.0, 0), (1.5, 0), (2.0, 1), (3.5, 1), (0.3, 2), (1.0, 2)]


def dataset_conf(**overrides):
    return validate({"min_duration": 0.5, "max_duration": 3.0, **overrides}, SCHEMA["dataset_conf"], "<test>")


@pytest.fixture(scope="module")
def train_list(tmp_path_factory):
    """Noise-like recordings (every crop is unique, so its offset can be found) and their list."""
    root = tmp_path_factory.mktemp("data")
    lines = []
    for index, (seconds, label) in enumerate(UTTERANCES):
        rng = np.random.default_rng(index)
        wav = (0.05 * (index + 1) * rng.standard_normal(int(seconds * SR))).clip(-0.99, 0.99)
        path = root / f"utt{index}.wav"
        sf.write(path, wav, SR, subtype="PCM_16")
        lines.append(f"{path}\t{label}\t{seconds:.3f}\n")
    list_path = root / "train_list.txt"
    list_path.write_text("".join(lines))
    return list_path


def find_offset(crop, whole):
    """The position of ``crop`` inside ``whole`` (exact match of the first samples)."""
    candidates = np.flatnonzero(np.abs(whole[:len(whole) - len(crop) + 1] - crop[0]) < 1e-6)
    hits = [s for s in candidates if np.allclose(whole[s:s + len(crop)], crop, atol=1e-6)]
    assert len(hits) == 1
    return int(hits[0])


def test_read_data_list_two_or_three_columns(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("/a.wav\t0\n\n/b.flac\t3\t2.5\n")
    assert read_data_list(path) == [("/a.wav", 0, None), ("/b.flac", 3, 2.5)]
    for bad in ("/a.wav\n", "/a.wav\tx\n", "/a.wav\t1\tlong\n", "/a.wav\t-1\n", "/a.wav\t1\t2\t3\n"):
        path.write_text("/ok.wav\t0\n" + bad)
        with pytest.raises(ConfigError, match=r"list.txt:2"):
            read_data_list(path)
    with pytest.raises(ConfigError, match="not found"):
        read_data_list(tmp_path / "absent.txt")
    path.write_bytes(b"/a.wav\t0\n\xff\xfe\n")
    with pytest.raises(ConfigError, match="cannot read data list .*list.txt: 'utf-8' codec can't decode"):
        read_data_list(path)
    with pytest.raises(ConfigError, match="cannot read data list"):
        read_data_list(tmp_path)


def test_crops_per_epoch_and_lengths(train_list):
    ds = SpeakerCropDataset(train_list, dataset_conf(), seed=3)
    assert ds.num_too_short == 1 and len(ds.utterances) == 5
    assert ds.num_speakers == 3 and ds.num_base_speakers == 3
    # 12 s / 3 s -> 4 visits, 3.5 s -> 2, the others 1.
    assert ds.visits.tolist() == [4, 1, 1, 2, 1] and len(ds) == 9
    for index in range(len(ds)):
        wav, label, utterance = ds[index]
        assert wav.dtype == np.float32 and wav.ndim == 1
        assert 0.5 * SR <= len(wav) <= 3.0 * SR
        assert label == ds.utterances[utterance].label
    # The 4 crops of the long recording come from its 4 quarters.
    whole = ds.waveform(0)
    slack = len(whole) - 3 * SR
    starts = [find_offset(ds[i][0], whole) for i in range(4)]
    assert all(k * slack / 4 <= s <= (k + 1) * slack / 4 + 1 for k, s in enumerate(starts))


def test_db_normalisation(train_list):
    ds = SpeakerCropDataset(train_list, dataset_conf(target_db=-25), seed=0)
    for utterance in range(len(ds.utterances)):
        level = 10 * math.log10(np.mean(np.square(ds.waveform(utterance), dtype=np.float64)))
        assert level == pytest.approx(-25, abs=1e-3)
    raw = SpeakerCropDataset(train_list, dataset_conf(use_db_normalization=False), seed=0)
    np.testing.assert_allclose(raw.waveform(1), sf.read(raw.utterances[1].path, dtype="float32")[0])


def test_crops_deterministic_per_seed_and_epoch(train_list):
    def crops(seed, epoch):
        ds = SpeakerCropDataset(train_list, dataset_conf(), seed=seed)
        ds.set_epoch(epoch)
        return [ds[i][0] for i in range(4)]

    same = zip(crops(1, 2), crops(1, 2))
    assert all(np.array_equal(a, b) for a, b in same)
    assert not all(np.array_equal(a, b) for a, b in zip(crops(1, 2), crops(1, 3)))
    assert not all(np.array_equal(a, b) for a, b in zip(crops(1, 2), crops(2, 2)))


def test_set_excluded(train_list):
    ds = SpeakerCropDataset(train_list, dataset_conf(), seed=0)
    before = [ds[i][0] for i in range(len(ds)) if ds.item_key(i)[0] == 1]
    ds.set_excluded([0, 3])
    assert len(ds) == 3
    assert {ds[i][2] for i in range(len(ds))} == {1, 2, 4}
    # Excluding others does not move an utterance's crops.
    after = [ds[i][0] for i in range(len(ds)) if ds.item_key(i)[0] == 1]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    ds.set_excluded([])
    assert len(ds) == 9
    with pytest.raises(ConfigError, match="set_excluded"):
        ds.set_excluded([5])


def test_speed_perturbation_as_classes(train_list):
    conf = validate_augmentation_config({"speed": {"prob": 1.0, "speeds": [0.9, 1.1]}, "volume": {"prob": 0},
                                         "noise": {"prob": 0}, "reverb": {"prob": 0}})
    perturb = SpeedPerturb(conf, SR)
    ds = SpeakerCropDataset(train_list, dataset_conf(speed_perturb_as_classes=True), speed_perturb=perturb, seed=0)
    assert ds.num_speakers == 9
    plain = SpeakerCropDataset(train_list, dataset_conf(), seed=0)
    labels = set()
    for epoch in range(3):
        ds.set_epoch(epoch)
        plain.set_epoch(epoch)
        for index in range(len(ds)):
            wav, label, utterance = ds[index]
            base = ds.utterances[utterance].label
            k, rest = divmod(label, 3)
            assert rest == base and k in (1, 2)
            unperturbed = len(plain[index][0])
            expected = math.ceil(unperturbed / (0.9, 1.1)[k - 1])
            assert len(wav) == min(expected, 3 * SR)
            labels.add(label)
    assert labels & {3, 4, 5} and labels & {6, 7, 8}
    # Without speed_perturb_as_classes the same perturbation keeps the labels.
    same = SpeakerCropDataset(train_list, dataset_conf(), speed_perturb=perturb, seed=0)
    assert same.num_speakers == 3 and all(same[i][1] < 3 for i in range(len(same)))


def test_collate_shapes():
    batch = [(np.ones(5, np.float32), 2, 7), (np.full(3, 2.0, np.float32), 0, 1)]
    waveforms, lengths, labels, utterances = collate_waveforms(batch)
    assert waveforms.shape == (2, 5) and waveforms.dtype == torch.float32
    assert lengths.tolist() == [5, 3] and labels.tolist() == [2, 0] and utterances.tolist() == [7, 1]
    assert waveforms[1].tolist() == [2, 2, 2, 0, 0]
    assert all(t.dtype == torch.long for t in (lengths, labels, utterances))


@pytest.mark.parametrize("dtype,atol", [("float32", 1e-7), ("int16", 2e-4)])
def test_preload_equals_lazy(train_list, dtype, atol):
    lazy = SpeakerCropDataset(train_list, dataset_conf(), seed=4)
    loaded = SpeakerCropDataset(train_list, dataset_conf(), seed=4, preload=True, preload_dtype=dtype)
    assert len(loaded) == len(lazy) and loaded.num_speakers == lazy.num_speakers
    assert isinstance(loaded._audio[0], np.ndarray) and loaded._audio[0].dtype == np.dtype(dtype)
    for index in range(len(lazy)):
        a, b = lazy[index], loaded[index]
        assert a[1:] == b[1:] and len(a[0]) == len(b[0])
        np.testing.assert_allclose(a[0], b[0], atol=atol)


def test_preload_from_config_and_unreadable_files(train_list, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEfmt nonsense")
    listing = tmp_path / "list.txt"
    listing.write_text(train_list.read_text() + f"{broken}\t1\t2.0\n")
    ds = SpeakerCropDataset(listing, dataset_conf(preload=True))
    assert ds.num_unreadable == 1 and len(ds.utterances) == 5
    # Two-column list: durations are probed, the unreadable file skipped.
    listing.write_text("".join("\t".join(line.split("\t")[:2]) + "\n"
                               for line in listing.read_text().splitlines()))
    probed = SpeakerCropDataset(listing, dataset_conf())
    assert probed.num_unreadable == 1 and probed.visits.tolist() == [4, 1, 1, 2, 1]


def test_sampler_splits_ranks_and_follows_epochs(train_list):
    ds = SpeakerCropDataset(train_list, dataset_conf(), seed=0)
    ranks = [CropSampler(ds, seed=9, num_replicas=2, rank=r) for r in range(2)]
    keys = [list(s) for s in ranks]
    assert len(keys[0]) == len(keys[1]) == 5  # 9 items padded to 10
    covered = {(u, v) for rank_keys in keys for u, v, _ in rank_keys}
    assert covered == {ds.item_key(i)[:2] for i in range(len(ds))}
    for sampler in ranks:
        sampler.set_epoch(4)
    assert ds.epoch == 4 and all(k[2] == 4 for k in ranks[0])
    assert [k[:2] for k in ranks[0]] != [k[:2] for k in keys[0]]


def test_loader_with_persistent_worker_sees_new_epochs(train_list):
    """Workers keep their own dataset copy; the sampler's keys carry the epoch to them."""
    ds = SpeakerCropDataset(train_list, dataset_conf(), seed=0)
    loader = build_train_loader(ds, batch_size=4, num_workers=1, seed=1)
    assert loader.persistent_workers and len(loader) == 2
    reference = build_train_loader(SpeakerCropDataset(train_list, dataset_conf(), seed=0), batch_size=4,
                                   num_workers=0, seed=1)
    for epoch in (1, 2):
        loader.sampler.set_epoch(epoch)
        reference.sampler.set_epoch(epoch)
        got, want = list(loader), list(reference)
        assert len(got) == 2
        for a, b in zip(got, want):
            waveforms, lengths, labels, utterances = a
            assert waveforms.shape[0] == 4 and lengths.max() == waveforms.shape[1]
            assert all(torch.equal(x, y) for x, y in zip(a, b))
        if epoch == 1:
            first = got
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(first, got))
