"""mvector/training/augment/: each waveform augmentation against its formula (batched, with padding), the RIR cache,
SpecAugment, config errors."""
import math

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from scipy.signal import welch

from mvector.training.augment import (Augmentation, SpecAugment, SpeedPerturb, WaveAugment, build_augmentation,
                                      load_augmentation_config, validate_augmentation_config)
from mvector.training.augment import rir as rir_module
from mvector.training.augment.ops import coloured_noise, mix_at_snr, reverberate
from mvector.training.augment.rir import load_rir_bank
from mvector.training.augment.speed import change_speed
from mvector.errors import ConfigError

pytestmark = pytest.mark.unit

SR = 16000
ALL_OFF = {"speed": {"prob": 0}, "volume": {"prob": 0}, "noise": {"prob": 0}, "reverb": {"prob": 0},
           "spec_aug": {"prob": 0}}


def only(section, **values):
    """A config with every augmentation off except ``section`` (prob 1 unless given)."""
    data = {k: dict(v) for k, v in ALL_OFF.items()}
    data[section] = {"prob": 1.0, **values}
    return validate_augmentation_config(data)


def speech(seconds=1.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
            + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def rms(x):
    return math.sqrt(float(np.mean(np.square(x, dtype=np.float64))))


def peak_hz(wav):
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return np.fft.rfftfreq(len(wav), 1 / SR)[np.argmax(spectrum)]


def test_shipped_config_loads():
    conf = load_augmentation_config("configs/augmentation.yml")
    assert set(conf) == {"speed", "volume", "noise", "reverb", "spec_aug"}
    assert all("prob" in section for section in conf.values())


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_changes_length_and_pitch(factor):
    t = np.arange(SR) / SR
    wav = np.sin(2 * np.pi * 400 * t).astype(np.float32)
    fast = change_speed(wav, factor, SR)
    assert len(fast) == math.ceil(len(wav) / factor)
    assert peak_hz(fast) == pytest.approx(400 * factor, abs=2)


def test_speed_perturbation_as_classes():
    perturb = SpeedPerturb(only("speed", speeds=[0.9, 1.1]), SR)
    wav = speech()
    seen = set()
    for seed in range(12):
        out, label = perturb(wav, 5, np.random.default_rng(seed), num_base_speakers=100)
        factor = {105: 0.9, 205: 1.1}[label]
        assert len(out) == math.ceil(len(wav) / factor)
        seen.add(label)
        _, plain_label = perturb(wav, 5, np.random.default_rng(seed))
        assert plain_label == 5
    assert seen == {105, 205}
    assert perturb.num_speed_classes == 3


def batch_of(*waves):
    """A zero-padded batch ``[B, N]`` (torch) and its lengths."""
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for row, wav in enumerate(waves):
        batch[row, :len(wav)] = torch.from_numpy(np.asarray(wav, dtype=np.float32))
    return batch, lengths


def augment(conf, waveforms, lengths, seed=0, **kwargs):
    torch.manual_seed(seed)
    return WaveAugment(conf, SR, **kwargs).train()(waveforms, lengths)


@pytest.mark.slow
def test_build_splits_loader_and_device_parts(tmp_path):
    speed, wave, spec = build_augmentation("configs/augmentation.yml", SR, rir_cache_dir=tmp_path / "rirs")
    assert isinstance(speed, SpeedPerturb) and isinstance(wave, WaveAugment) and isinstance(spec, SpecAugment)
    path = tmp_path / "aug.yml"
    path.write_text(yaml.safe_dump({section: {"prob": 0} for section in ("volume", "noise", "reverb")}))
    speed, wave, _ = build_augmentation(path, SR)
    assert speed.prob == 0.5 and wave is None  # nothing left for the device
    assert build_augmentation(None) == Augmentation(None, None, None)


def test_volume_gain_in_range():
    wav = speech()
    waveforms, lengths = batch_of(*[wav] * 20)
    out = augment(only("volume", min_gain_db=-6, max_gain_db=3), waveforms, lengths).numpy()
    gains = [20 * math.log10(rms(row) / rms(wav)) for row in out]
    assert all(-6 - 1e-4 <= g <= 3 + 1e-4 for g in gains) and max(gains) - min(gains) > 3


def test_mix_at_snr_formula_over_valid_samples():
    wav, noise = speech(), np.random.default_rng(1).standard_normal(SR).astype(np.float32)
    short = wav[:SR // 2]
    speech_batch, lengths = batch_of(wav, short, np.zeros(SR // 4, np.float32))
    noise_batch = torch.from_numpy(np.stack([noise] * 3))
    mixed = mix_at_snr(speech_batch, noise_batch, lengths, torch.tensor([0.0, 7.5, 20.0])).numpy()
    for row, (clean, snr) in enumerate([(wav, 0.0), (short, 7.5)]):
        added = mixed[row, :len(clean)] - clean
        assert 10 * math.log10(rms(clean) ** 2 / rms(added) ** 2) == pytest.approx(snr, abs=0.05)
    assert not mixed[1, len(short):].any()  # padding stays zero
    assert not mixed[2].any()  # silent speech is left alone


@pytest.mark.parametrize("kind", ["white", "pink", "brown", "babble"])
def test_generated_noise_reaches_snr(kind):
    waves = [speech(seed=s) for s in range(4)] + [speech(0.4, seed=9)]
    waveforms, lengths = batch_of(*waves)
    out = augment(only("noise", generated=[kind], min_snr_db=8, max_snr_db=12), waveforms, lengths).numpy()
    for row, wav in enumerate(waves):
        added = out[row, :len(wav)] - wav
        snr = 10 * math.log10(rms(wav) ** 2 / rms(added) ** 2)
        assert 8 - 0.5 <= snr <= 12 + 0.5
        assert not out[row, len(wav):].any()


def test_babble_is_made_of_other_rows():
    tones = [(0.3 * np.sin(2 * np.pi * hz * np.arange(SR) / SR)).astype(np.float32) for hz in (300, 1000, 2500)]
    waveforms, lengths = batch_of(*tones)
    conf = only("noise", generated=["babble"], min_babble_speakers=1, max_babble_speakers=1, min_snr_db=0,
                max_snr_db=0)
    out = augment(conf, waveforms, lengths).numpy()
    for row, tone in enumerate(tones):
        spectrum = np.abs(np.fft.rfft(out[row] - tone))
        freqs = np.fft.rfftfreq(SR, 1 / SR)
        strongest = freqs[np.argmax(spectrum)]
        others = [hz for i, hz in enumerate((300, 1000, 2500)) if i != row]
        assert min(abs(strongest - hz) for hz in others) < 2  # another row's voice, never its own


def test_babble_needs_another_row():
    waveforms, lengths = batch_of(speech())
    out = augment(only("noise", generated=["babble"]), waveforms, lengths)
    assert torch.equal(out, waveforms)


@pytest.mark.parametrize("kind,exponent", [("white", 0.0), ("pink", 1.0), ("brown", 2.0)])
def test_coloured_noise_spectral_slope(kind, exponent):
    torch.manual_seed(0)
    noise = coloured_noise(2, 4 * SR, torch.full((2,), exponent)).numpy()
    for row in noise:
        assert rms(row) == pytest.approx(1.0, rel=1e-4)
        freqs, power = welch(row, fs=SR, nperseg=4096)
        band = (freqs > 100) & (freqs < 4000)
        slope = np.polyfit(np.log10(freqs[band]), np.log10(power[band]), 1)[0]
        assert slope == pytest.approx(-exponent, abs=0.15)


def test_noise_dir_files_are_mixed_in(tmp_path):
    hum = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(SR // 4) / SR)).astype(np.float32)
    sf.write(tmp_path / "hum.wav", hum, SR)
    sf.write(tmp_path / "silence.wav", np.zeros(SR // 4, np.float32), SR)
    wav = speech()
    waveforms, lengths = batch_of(wav, wav[:SR // 3])
    out = augment(only("noise", noise_dir=str(tmp_path), min_snr_db=0, max_snr_db=0), waveforms, lengths).numpy()
    added = out[0] - wav
    assert peak_hz(added) == pytest.approx(1000, abs=2)  # the hum, looped to the speech's length
    assert 10 * math.log10(rms(wav) ** 2 / rms(added) ** 2) == pytest.approx(0, abs=0.5)
    assert not out[1, SR // 3:].any()


def test_missing_or_empty_folders_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="noise.noise_dir"):
        WaveAugment(only("noise", noise_dir=str(tmp_path / "absent")), SR)
    with pytest.raises(ConfigError, match="reverb.rir_dir.*no audio files"):
        WaveAugment(only("reverb", rir_dir=str(tmp_path)), SR)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really")
    sf.write(tmp_path / "silence.wav", np.zeros(800, np.float32), SR)
    with pytest.raises(ConfigError, match="reverb.rir_dir.*no readable, non-silent audio"):
        WaveAugment(only("reverb", rir_dir=str(tmp_path)), SR)


def test_reverberate_keeps_alignment_and_level():
    rng = np.random.default_rng(0)
    rir = np.zeros(3000, dtype=np.float32)
    rir[40] = 1.0  # propagation delay before the direct path
    rir[41:] = 0.2 * rng.standard_normal(2959) * np.exp(-np.arange(2959) / 400)
    assert_aligned(rir)


def assert_aligned(rir):
    """Broadband input: the cross-correlation of output and input peaks at lag 0 (direct path),
    in a full row and in a shorter, padded one."""
    wav = np.random.default_rng(5).standard_normal(SR).astype(np.float32)
    short = wav[:SR // 2]
    waveforms, lengths = batch_of(wav, short)
    rirs = torch.from_numpy(np.stack([rir, rir]))
    out = reverberate(waveforms, lengths, rirs).numpy()
    assert np.isfinite(out).all() and not out[1, len(short):].any()
    for row, dry in enumerate((wav, short)):
        wet = out[row, :len(dry)]
        assert rms(wet) == pytest.approx(rms(dry), rel=1e-4)
        lags = np.arange(-100, 101)
        xcorr = [np.dot(wet[100:-100], dry[100 + lag:len(dry) - 100 + lag]) for lag in lags]
        assert lags[int(np.argmax(xcorr))] == 0


def test_rir_bank_simulated_once_then_cached(tmp_path, monkeypatch):
    bank = load_rir_bank(SR, count=3, cache_dir=tmp_path)
    assert len(bank) == 3 and list(tmp_path.glob("*.npz"))
    for rir in bank:
        assert np.isfinite(rir).all() and 0 < len(rir) <= SR
        # Direct path first: before it only the slow pre-response of pyroomacoustics' zero-phase
        # 10 Hz high-pass, far below speech.
        direct = int(np.argmax(np.abs(rir)))
        assert np.sum(rir[:max(0, direct - 50)] ** 2) < 1e-2 * np.sum(rir ** 2)
        assert_aligned(rir)

    def no_simulation(*args, **kwargs):
        raise AssertionError("the cached bank should have been reused")

    monkeypatch.setattr(rir_module, "simulate_rir_bank", no_simulation)
    cached = load_rir_bank(SR, count=3, cache_dir=tmp_path)
    for a, b in zip(bank, cached):
        np.testing.assert_array_equal(a, b)

    wav = speech()
    waveforms, lengths = batch_of(wav, wav[:SR // 2])
    out = augment(only("reverb", num_simulated_rirs=3), waveforms, lengths, rir_cache_dir=tmp_path).numpy()
    assert np.isfinite(out).all() and not np.allclose(out[0], wav) and not out[1, SR // 2:].any()
    assert rms(out[0]) == pytest.approx(rms(wav), rel=1e-3)


def test_rir_dir_is_used(tmp_path):
    rir = np.zeros(800, dtype=np.float32)
    rir[0], rir[400] = 1.0, 0.9  # a strong echo 25 ms later
    sf.write(tmp_path / "echo.wav", rir, SR, subtype="FLOAT")
    wav = np.zeros(SR, dtype=np.float32)
    wav[1000] = 1.0
    waveforms, lengths = batch_of(wav)
    out = augment(only("reverb", rir_dir=str(tmp_path)), waveforms, lengths)[0].numpy()
    assert np.argmax(out) == 1000 and out[1400] == pytest.approx(0.9 * out[1000], rel=1e-3)


def test_wave_augment_draws_from_the_torch_rng_and_is_off_in_eval():
    conf = validate_augmentation_config({"noise": {"prob": 0.5, "generated": ["white", "babble"]},
                                         "volume": {"prob": 0.5}, "reverb": {"prob": 0}})
    waveforms, lengths = batch_of(*[speech(seed=s) for s in range(8)])
    first, again = augment(conf, waveforms, lengths, seed=3), augment(conf, waveforms, lengths, seed=3)
    assert torch.equal(first, again) and not torch.equal(first, augment(conf, waveforms, lengths, seed=4))
    assert not torch.equal(first, waveforms)
    assert torch.equal(WaveAugment(conf, SR).eval()(waveforms, lengths), waveforms)


@pytest.mark.gpu
def test_wave_augment_runs_on_cuda(tmp_path):
    waveforms, lengths = batch_of(*[speech(seed=s) for s in range(4)])
    module = WaveAugment(load_augmentation_config("configs/augmentation.yml"), SR, rir_cache_dir=tmp_path).train()
    out = module(waveforms.cuda(), lengths.cuda())
    assert out.is_cuda and out.shape == waveforms.shape and torch.isfinite(out).all()


def test_bad_keys_and_values_name_key_and_file(tmp_path):
    path = tmp_path / "aug.yml"
    path.write_text(yaml.safe_dump({"noise": {"prob": 0.5, "snr_db": 5}}))
    with pytest.raises(ConfigError, match=r"aug.yml.*unknown key 'noise.snr_db'"):
        load_augmentation_config(path)
    path.write_text(yaml.safe_dump({"speed": {"prob": 1.5}}))
    with pytest.raises(ConfigError, match=r"aug.yml.*speed.prob"):
        build_augmentation(path)
    path.write_text(yaml.safe_dump({"noise": {"generated": ["violet"]}}))
    with pytest.raises(ConfigError, match="noise.generated"):
        load_augmentation_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_augmentation_config(tmp_path / "absent.yml")


def test_spec_augment_masks_only_valid_frames():
    torch.manual_seed(0)
    features = torch.randn(6, 50, 20) + 3.0
    frame_lengths = torch.tensor([50, 40, 30, 20, 12, 5])
    spec = SpecAugment(freq_mask_width=(2, 4), time_mask_width=(3, 6), prob=1.0).train()
    out = spec(features, frame_lengths)
    changed = out != features
    for row, length in enumerate(frame_lengths.tolist()):
        assert not changed[row, length:].any()
        frames = changed[row, :length].all(dim=1).nonzero().flatten()
        bins = changed[row, :length].all(dim=0).nonzero().flatten()
        assert 3 <= len(frames) <= min(6, length) or len(frames) == length
        assert 2 <= len(bins) <= 4
        valid_mean = features[row, :length].mean()
        assert torch.allclose(out[row][changed[row]], valid_mean)
    assert torch.equal(spec.eval()(features, frame_lengths), features)
    assert torch.equal(SpecAugment(prob=0.0).train()(features, frame_lengths), features)


def test_spec_augment_from_config_file():
    spec = build_augmentation("configs/augmentation.yml").spec
    conf = load_augmentation_config("configs/augmentation.yml")["spec_aug"]
    assert spec.prob == conf["prob"] and list(spec.time_mask_width) == conf["time_mask_width"]
