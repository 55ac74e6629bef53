"""Tests for mvector.features: Fbank against kaldi-native-fbank, the STFT features against
librosa, frame counts, padding invariance, mean normalisation, errors and CPU/CUDA agreement."""

from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from mvector.errors import AudioError, ConfigError
from mvector.features import (
    FEATURIZERS,
    MFCC,
    PAD_MODES,
    AudioFeaturizer,
    Fbank,
    MelSpectrogram,
    Spectrogram,
)

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
METHODS = ["Fbank", "MFCC", "MelSpectrogram", "Spectrogram"]
# librosa STFT settings equal to our defaults for the STFT features.
STFT_ARGS = dict(n_fft=512, hop_length=160, win_length=400, window="hann", center=True, pad_mode="reflect")


def synthetic_speechlike(num_samples, seed=0):
    """Float64 [-1, 1] signal with harmonics, noise, a loudness ramp and a silent stretch."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / 16000
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / 16000
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    signal = 0.2 * voiced * (0.3 + 0.7 * np.abs(np.sin(2 * np.pi * 1.3 * t))) + 0.02 * rng.standard_normal(num_samples)
    signal[num_samples // 3: num_samples // 3 + 2000] = 0.0
    return np.clip(signal, -1, 1)


def dev_files(step=100):
    """A fixed spread of dev utterances (every ``step``-th list entry, all three corpora)."""
    from mvector.lists import read_speaker_list

    return [path for path, _ in read_speaker_list(DATA / "dev" / "list.tsv")][::step]


def kaldi_reference(samples, **options):
    knf = pytest.importorskip("kaldi_native_fbank")
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0
    opts.mel_opts.num_bins = options.get("num_mel_bins", 80)
    opts.frame_opts.window_type = options.get("window_type", "povey")
    opts.frame_opts.preemph_coeff = options.get("preemph", 0.97)
    opts.frame_opts.remove_dc_offset = options.get("remove_dc_offset", True)
    opts.mel_opts.low_freq = options.get("low_freq", 20)
    opts.mel_opts.high_freq = options.get("high_freq", 0)
    opts.use_energy = options.get("use_energy", False)
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000, (np.asarray(samples, dtype=np.float64) * 32768).tolist())
    fbank.input_finished()
    return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])


def ours(featurizer, samples):
    features, frame_lengths = featurizer(torch.as_tensor(samples, dtype=torch.float32)[None])
    assert frame_lengths.tolist() == [features.shape[1]]
    return features[0].double().numpy()


def kaldi_differences(ref, got):
    """|difference| after removing each side's per-bin (per-utterance) mean."""
    assert ref.shape == got.shape
    return np.abs((ref - ref.mean(0)) - (got - got.mean(0)))


def assert_kaldi_close(diff):
    """The agreement asked of Fbank: 99.9th percentile of the mean-removed |difference| < 1e-3
    and max < 0.05. Both sides compute in float32, and in bins ~60 dB below a frame's peak that
    rounding alone is ~1e-3 (kaldi-native-fbank vs a float64 Kaldi pipeline: up to 1.4e-3 at
    the 99.9th percentile on some single dev utterances), so the percentile is taken over all
    frames of the tested utterances together."""
    assert np.percentile(diff, 99.9) < 1e-3, np.percentile(diff, 99.9)
    assert diff.max() < 0.05, diff.max()


@pytest.mark.data
def test_fbank_matches_kaldi_native_fbank_on_dev_speech():
    pytest.importorskip("kaldi_native_fbank")
    files = dev_files()
    assert len(files) >= 5
    fbank = Fbank().eval()
    diffs = []
    for path in files:
        samples, rate = sf.read(path, dtype="float32")
        assert rate == 16000
        diffs.append(kaldi_differences(kaldi_reference(samples), ours(fbank, samples)).ravel())
    assert_kaldi_close(np.concatenate(diffs))


@pytest.mark.parametrize("options", [
    dict(),
    dict(use_energy=True, num_mel_bins=40),
    dict(window_type="hamming", preemph=0.0, remove_dc_offset=False, low_freq=100, high_freq=-400),
    dict(window_type="hanning", num_mel_bins=64, high_freq=7000),
    # Pre-emphasis and DC removal each alone: the folded windowing handles every combination.
    dict(preemph=0.0, use_energy=True),
    dict(preemph=0.5, remove_dc_offset=False),
])
def test_fbank_options_match_kaldi_native_fbank(options):
    samples = synthetic_speechlike(16000 + 123).astype(np.float32)
    fbank = Fbank(**options).eval()
    got = ours(fbank, samples)
    ref = kaldi_reference(samples, **options)
    assert fbank.feature_dim == ref.shape[1]
    assert_kaldi_close(kaldi_differences(ref, got))
    # Without mean removal too: the absolute values (energy included) agree.
    assert np.percentile(np.abs(ref - got), 99) < 1e-3


def test_fbank_dither_only_in_training_mode():
    x = torch.as_tensor(synthetic_speechlike(8000), dtype=torch.float32)[None]
    plain = Fbank()(x)[0]
    dithered = Fbank(dither=1.0)
    assert not torch.allclose(dithered.train()(x)[0], plain)
    torch.testing.assert_close(dithered.eval()(x)[0], plain)


def test_spectrogram_matches_librosa_stft_magnitude():
    y = synthetic_speechlike(16000 + 77)
    ref = np.abs(librosa.stft(y, **STFT_ARGS)).T
    got = ours(Spectrogram(), y)
    # Tolerance: 1e-4 relative to each bin, plus 1e-6 of the largest magnitude (float32 FFT).
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6 * ref.max())
    power = ours(Spectrogram(power=2.0, pad_mode="constant", window="hamming"), y)
    ref_power = np.abs(librosa.stft(y, **{**STFT_ARGS, "pad_mode": "constant", "window": "hamming"})).T ** 2
    np.testing.assert_allclose(power, ref_power, rtol=2e-4, atol=1e-6 * ref_power.max())


@pytest.mark.parametrize("mel_args", [dict(), dict(htk=True, norm=None, fmin=20.0, fmax=7600.0, n_mels=64)])
def test_melspectrogram_matches_librosa(mel_args):
    y = synthetic_speechlike(24000 + 5)
    ref = librosa.feature.melspectrogram(y=y, sr=16000, power=2.0, **STFT_ARGS,
                                         **{"n_mels": 80, **mel_args}).T
    power = ours(MelSpectrogram(log=False, **mel_args), y)
    # Tolerance on the power: 2e-4 relative, plus 1e-6 of the largest value.
    np.testing.assert_allclose(power, ref, rtol=2e-4, atol=1e-6 * ref.max())
    log_mel = ours(MelSpectrogram(**mel_args), y)
    # Tolerance on ln(max(mel, 1e-10)): 1e-3 absolute everywhere except float32 noise in
    # near-silent bins (checked at the 99.9th percentile, max 0.05).
    diff = np.abs(log_mel - np.log(np.maximum(ref, 1e-10)))
    assert np.percentile(diff, 99.9) < 1e-3 and diff.max() < 0.05


@pytest.mark.parametrize("mfcc_args", [dict(), dict(n_mfcc=20, lifter=22.0, htk=True, pad_mode="constant")])
def test_mfcc_matches_librosa(mfcc_args):
    y = synthetic_speechlike(20000 + 31, seed=3)
    n_mfcc = mfcc_args.get("n_mfcc", 40)
    ref = librosa.feature.mfcc(y=y, sr=16000, n_mfcc=n_mfcc, n_mels=80, lifter=mfcc_args.get("lifter", 0),
                               htk=mfcc_args.get("htk", False),
                               **{**STFT_ARGS, "pad_mode": mfcc_args.get("pad_mode", "reflect")}).T
    got = ours(MFCC(**mfcc_args), y)
    assert got.shape == ref.shape
    # Tolerance: 0.01 absolute on coefficients in dB units (values span ~[-700, 100]).
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-2)


@pytest.mark.parametrize("length", [1, 2, 3, 5, 100, 256, 257, 1000])
def test_reflect_padding_uses_each_rows_own_length(length):
    pad, width = 256, 1200
    rows = torch.randn(2, width, dtype=torch.float64)
    lengths = torch.tensor([length, width])
    padded = PAD_MODES["reflect"](rows, lengths, pad)
    for row, n in zip(range(2), lengths.tolist()):
        expected = np.pad(rows[row, :n].numpy(), pad, mode="reflect") if n > 1 else np.full(n + 2 * pad, rows[row, 0].item())
        np.testing.assert_array_equal(padded[row, : n + 2 * pad].numpy(), expected)


@pytest.mark.parametrize("num_samples", [1, 159, 160, 399, 400, 401, 559, 560, 16000, 16001])
def test_frame_counts(num_samples):
    x = torch.zeros(1, num_samples)
    fbank_frames = 1 + (num_samples - 400) // 160 if num_samples >= 400 else 0
    centered_frames = 1 + num_samples // 160
    for featurizer, expected in [(Fbank(), fbank_frames), (MFCC(), centered_frames),
                                 (MelSpectrogram(), centered_frames), (Spectrogram(), centered_frames)]:
        features, frame_lengths = featurizer(x)
        assert featurizer.num_frames(num_samples) == expected
        assert features.shape == (1, expected, featurizer.feature_dim)
        assert frame_lengths.tolist() == [expected]
    if num_samples >= 512:
        assert librosa.stft(np.zeros(num_samples), **STFT_ARGS).shape[1] == centered_frames
    # An odd FFT size pads n_fft // 2 per side, one sample less than n_fft in all.
    assert Spectrogram(n_fft=401, win_length=401).num_frames(num_samples) == 1 + (num_samples - 1) // 160


def test_frame_lengths_follow_sample_lengths_in_a_batch():
    lengths = torch.tensor([16000, 399, 400, 1, 12345])
    for name in METHODS:
        featurizer = FEATURIZERS[name]()
        features, frame_lengths = featurizer(torch.randn(5, 16000) * 0.1, lengths)
        assert frame_lengths.dtype == torch.long
        assert frame_lengths.tolist() == [featurizer.num_frames(n) for n in lengths.tolist()]
        assert features.shape[1] == featurizer.num_frames(16000)


@pytest.mark.parametrize("name", METHODS)
def test_padding_invariance_with_garbage_padding(name):
    featurizer = FEATURIZERS[name]()
    n = 12345
    x = torch.as_tensor(synthetic_speechlike(n, seed=1), dtype=torch.float32)
    alone, alone_frames = featurizer(x[None])
    batch = torch.empty(3, n + 2000)
    batch[0].uniform_(-1, 1)
    batch[1].uniform_(-50, 50)
    batch[2].fill_(float("nan"))
    batch[:, :n] = x
    features, frame_lengths = featurizer(batch, torch.full((3,), n))
    valid = alone_frames.item()
    assert frame_lengths.tolist() == [valid] * 3
    for row in range(3):
        torch.testing.assert_close(features[row, :valid], alone[0], atol=1e-4, rtol=1e-5)
        assert torch.all(features[row, valid:] == 0)


def test_mean_norm_ignores_padded_frames():
    n = 9000
    x = torch.as_tensor(synthetic_speechlike(n, seed=2), dtype=torch.float32)
    for name in METHODS:
        plain = AudioFeaturizer(name, mean_norm=False)
        normed = AudioFeaturizer(name, mean_norm=True)
        raw, _ = plain(x[None])
        expected = raw[0] - raw[0].mean(dim=0)
        batch = torch.cat([x, torch.empty(4000).uniform_(-3, 3)])[None].repeat(2, 1)
        features, frame_lengths = normed(batch, torch.tensor([n, n]))
        valid = frame_lengths[0].item()
        torch.testing.assert_close(features[0, :valid], expected, atol=1e-4, rtol=1e-5)
        assert features[0, :valid].mean(dim=0).abs().max() < 1e-4
        assert torch.all(features[:, valid:] == 0)


def test_batch_of_different_lengths_equals_one_by_one():
    lengths = [16000, 12345, 8000, 401]
    utterances = [torch.as_tensor(synthetic_speechlike(n, seed=i), dtype=torch.float32)
                  for i, n in enumerate(lengths)]
    batch = torch.nn.utils.rnn.pad_sequence(utterances, batch_first=True)
    for name in METHODS:
        featurizer = AudioFeaturizer(name)
        features, frame_lengths = featurizer(batch, torch.tensor(lengths))
        for row, utterance in enumerate(utterances):
            single, single_frames = featurizer(utterance)  # 1-D: a batch of one
            assert single.shape == (1, featurizer.num_frames(len(utterance)), featurizer.feature_dim)
            assert frame_lengths[row] == single_frames[0]
            torch.testing.assert_close(features[row, : single.shape[1]], single[0], atol=1e-4, rtol=1e-5)


def test_float32_under_autocast():
    x = torch.as_tensor(synthetic_speechlike(8000), dtype=torch.float32)[None]
    for name in METHODS:
        featurizer = AudioFeaturizer(name)
        expected, _ = featurizer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, _ = featurizer(x.bfloat16())
        assert got.dtype == torch.float32
        # bf16 input rounds the samples themselves; the compute after that is float32.
        torch.testing.assert_close(got, featurizer(x.bfloat16().float())[0])
        assert expected.dtype == torch.float32


def test_audio_featurizer_interface_and_buffers():
    assert set(FEATURIZERS) == set(METHODS) | {"HFModel"}  # the SSL front-end: tests/test_features_ssl.py
    dims = {"Fbank": 80, "MFCC": 40, "MelSpectrogram": 80, "Spectrogram": 257}
    for name in METHODS:
        featurizer = AudioFeaturizer(name)
        assert featurizer.feature_dim == dims[name]
        assert featurizer.sample_rate == 16000
        assert featurizer.state_dict() == {}  # constants are non-persistent buffers
    assert AudioFeaturizer("Fbank", {"num_mel_bins": 64, "use_energy": True}).feature_dim == 65
    assert AudioFeaturizer("MFCC", {"n_mfcc": 13, "sample_rate": 8000}).sample_rate == 8000


def test_unknown_method_or_argument_raises_config_error():
    with pytest.raises(ConfigError, match="Fbank.*MFCC.*MelSpectrogram.*Spectrogram"):
        AudioFeaturizer("Wavelet")
    with pytest.raises(ConfigError, match="num_mel_bin'"):
        AudioFeaturizer("Fbank", {"num_mel_bin": 80})
    with pytest.raises(ConfigError, match="n_mfcc"):
        AudioFeaturizer("Spectrogram", {"n_mfcc": 13})
    with pytest.raises(ConfigError, match="povey"):
        Fbank(window_type="triangle")
    with pytest.raises(ConfigError, match="pad mode"):
        Spectrogram(pad_mode="wrap")
    with pytest.raises(ConfigError, match="win_length"):
        MelSpectrogram(n_fft=256, win_length=400)
    with pytest.raises(ConfigError, match="high_freq"):
        Fbank(low_freq=5000, high_freq=4000)
    with pytest.raises(ConfigError, match="method_args"):
        AudioFeaturizer("Fbank", ["num_mel_bins"])


def test_bad_input_raises_audio_error():
    featurizer = AudioFeaturizer("Fbank")
    with pytest.raises(AudioError, match="float"):
        featurizer(torch.zeros(1, 16000, dtype=torch.int16))
    with pytest.raises(AudioError, match="shape"):
        featurizer(torch.zeros(1, 1, 16000))
    with pytest.raises(AudioError, match="lengths"):
        featurizer(torch.zeros(2, 16000), torch.tensor([16000, 16001]))
    with pytest.raises(AudioError, match="lengths"):
        featurizer(torch.zeros(2, 16000), torch.tensor([16000]))
    with pytest.raises(AudioError, match="empty"):
        featurizer(torch.zeros(2, 0))


@pytest.mark.gpu
@pytest.mark.parametrize("name", METHODS)
def test_cuda_matches_cpu(name):
    lengths = torch.tensor([16000, 12000, 3000])
    batch = torch.as_tensor(np.stack([synthetic_speechlike(16000, seed=i) for i in range(3)]), dtype=torch.float32)
    cpu = AudioFeaturizer(name)
    gpu = AudioFeaturizer(name).cuda()
    expected, expected_frames = cpu(batch, lengths)
    got, frames = gpu(batch.cuda(), lengths.cuda())
    assert got.device.type == "cuda" and frames.device.type == "cuda"
    assert torch.equal(frames.cpu(), expected_frames)
    # float32 FFTs differ in rounding between devices: loose bounds relative to the values.
    scale = expected.abs().max().item()
    diff = (got.cpu() - expected).abs()
    assert torch.quantile(diff.flatten(), 0.999) < 1e-3 * scale
    assert diff.max() < 1e-2 * scale
