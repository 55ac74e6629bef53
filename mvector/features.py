"""Batched acoustic front-ends in plain torch: Kaldi Fbank and librosa-style STFT features.

Every featurizer maps ``(waveforms[B, N] float in [-1, 1], lengths[B])`` to
``(features[B, T, D] float32, frame_lengths[B] long)``. Rows are padded utterances; the
features of an utterance do not depend on what its padding holds or on the batch's padded
length, and padded output frames are 0. The same code runs on any device: constant tensors
are non-persistent buffers (they move with ``.to()`` but stay out of checkpoints) and
``forward`` uses torch only, always in float32 (log-mel in bf16/fp16 loses too much).
"""
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mvector.errors import AudioError, ConfigError
from mvector.registry import Registry

FEATURIZERS = Registry('feature method')
KALDI_WINDOWS = Registry('Kaldi window type')
STFT_WINDOWS = Registry('STFT window')
PAD_MODES = Registry('pad mode')

# Kaldi floors energies at float32 epsilon before the log.
FLOAT_EPS = torch.finfo(torch.float32).eps


def _require_positive(owner, **values):
    for key, value in values.items():
        if not value > 0:
            raise ConfigError(f"{owner}: '{key}' must be > 0, got {value!r}")


def _valid_mask(lengths, size):
    """[B, size] bool: True where the index is inside the row's length."""
    return torch.arange(size, device=lengths.device) < lengths[:, None]


class _Featurizer(nn.Module):
    """Shared input checks, float32/no-autocast compute and masking of padded frames."""

    def __init__(self, sample_rate):
        super().__init__()
        _require_positive(type(self).__name__, sample_rate=sample_rate)
        self.sample_rate = int(sample_rate)

    @property
    def feature_dim(self) -> int:
        raise NotImplementedError

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Number of valid frames for each sample count in ``lengths`` (long tensor)."""
        raise NotImplementedError

    def _compute(self, waveforms, lengths, frame_lengths):
        """Features [B, T, D] of float32 waveforms [B, N]; padded frames may hold anything."""
        raise NotImplementedError

    def num_frames(self, num_samples: int) -> int:
        return int(self.frame_lengths(torch.tensor([int(num_samples)]))[0])

    def forward(self, waveforms, lengths=None):
        waveforms, lengths = _check_batch(waveforms, lengths, type(self).__name__)
        frame_lengths = self.frame_lengths(lengths)
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            features = self._compute(waveforms.float(), lengths, frame_lengths)
        valid = _valid_mask(frame_lengths, features.shape[1])
        features = torch.where(valid[..., None], features, features.new_zeros(()))
        return features, frame_lengths


def _check_batch(waveforms, lengths, owner):
    """Validate ``(waveforms, lengths)``; 1-D waveforms become a batch of one."""
    if not isinstance(waveforms, torch.Tensor):
        raise AudioError(f"{owner}: waveforms must be a torch.Tensor, got {type(waveforms).__name__}")
    if not waveforms.is_floating_point():
        raise AudioError(f"{owner}: waveforms must be float samples in [-1, 1], got dtype {waveforms.dtype}")
    if waveforms.dim() == 1:
        waveforms = waveforms[None]
        if lengths is not None:
            lengths = torch.as_tensor(lengths).reshape(1)
    if waveforms.dim() != 2:
        raise AudioError(f"{owner}: waveforms must have shape (batch, samples), got {tuple(waveforms.shape)}")
    batch, num_samples = waveforms.shape
    if num_samples == 0:
        raise AudioError(f"{owner}: waveforms are empty (0 samples)")
    if lengths is None:
        return waveforms, torch.full((batch,), num_samples, dtype=torch.long, device=waveforms.device)
    lengths = torch.as_tensor(lengths)
    if lengths.shape != (batch,) or lengths.is_floating_point() or lengths.is_complex():
        raise AudioError(f"{owner}: lengths must be an integer tensor of shape ({batch},), "
                         f"got {lengths.dtype} {tuple(lengths.shape)}")
    # Checking values means a host sync, so only CPU lengths are checked, and not while
    # torch.export traces (a data-dependent branch); clamping keeps any value inside the batch.
    if (lengths.device.type == 'cpu' and not torch.compiler.is_exporting()
            and bool(((lengths < 0) | (lengths > num_samples)).any())):
        raise AudioError(f"{owner}: lengths must lie in [0, {num_samples}] (the padded length), "
                         f"got {lengths.tolist()}")
    return waveforms, lengths.to(waveforms.device, torch.long).clamp(0, num_samples)


# ---------------------------------------------------------------- Kaldi Fbank


@KALDI_WINDOWS.register(name='povey')
def _povey_window(size):
    return _hann_symmetric(size).pow(0.85)


@KALDI_WINDOWS.register(name='hanning')
def _hann_symmetric(size):
    return 0.5 - 0.5 * torch.cos(2 * math.pi * torch.arange(size, dtype=torch.float64) / (size - 1))


@KALDI_WINDOWS.register(name='hamming')
def _hamming_symmetric(size):
    return 0.54 - 0.46 * torch.cos(2 * math.pi * torch.arange(size, dtype=torch.float64) / (size - 1))


@KALDI_WINDOWS.register(name='blackman')
def _blackman_symmetric(size):
    a = 2 * math.pi * torch.arange(size, dtype=torch.float64) / (size - 1)
    return 0.42 - 0.5 * torch.cos(a) + 0.08 * torch.cos(2 * a)


@KALDI_WINDOWS.register(name='rectangular')
def _rectangular(size):
    return torch.ones(size, dtype=torch.float64)


def _kaldi_mel(hz):
    return 1127.0 * torch.log1p(hz / 700.0)


def kaldi_mel_banks(num_bins, padded_size, sample_rate, low_freq, high_freq):
    """Kaldi's triangular mel filters as a [padded_size//2 + 1, num_bins] float64 matrix.

    As in Kaldi the Nyquist bin gets no weight and a bin belongs to a filter only strictly
    inside its edges.
    """
    hz = torch.arange(padded_size // 2, dtype=torch.float64) * sample_rate / padded_size
    mel = _kaldi_mel(hz)[:, None]
    low, high = _kaldi_mel(torch.tensor(float(low_freq))), _kaldi_mel(torch.tensor(float(high_freq)))
    delta = (high - low) / (num_bins + 1)
    left = low + torch.arange(num_bins, dtype=torch.float64) * delta
    center, right = left + delta, left + 2 * delta
    rising = (mel - left) / (center - left)
    falling = (right - mel) / (right - center)
    weights = torch.where(mel <= center, rising, falling)
    weights = torch.where((mel > left) & (mel < right), weights, torch.zeros(()))
    return F.pad(weights, (0, 0, 0, 1))  # the Nyquist row


@FEATURIZERS.register(name='Fbank')
class Fbank(_Featurizer):
    """Kaldi-compatible log mel filterbank (``compute-fbank-feats``), batched.

    Frames are ``frame_length_ms`` long every ``frame_shift_ms`` with snip_edges=True, so an
    utterance of n samples has ``1 + (n - win) // hop`` frames (0 when n < win). Optional dither
    of the waveform (training mode only), then per frame: DC offset removal, pre-emphasis, window, FFT of the
    next power of two, power spectrum, Kaldi mel banks, ``log(max(x, float32 eps))``.

    ``wave_scale`` multiplies the [-1, 1] input first: Kaldi works on int16-scaled samples, and
    the log floor and ``dither`` (in int16 units, as in Kaldi) only mean the same with it.
    ``use_energy`` prepends Kaldi's raw log frame energy, making ``num_mel_bins + 1`` features.
    """

    def __init__(self, sample_rate=16000, num_mel_bins=80, frame_length_ms=25.0, frame_shift_ms=10.0,
                 preemph=0.97, low_freq=20.0, high_freq=0.0, remove_dc_offset=True, window_type='povey',
                 use_energy=False, dither=0.0, wave_scale=32768.0):
        super().__init__(sample_rate)
        _require_positive('Fbank', num_mel_bins=num_mel_bins, frame_length_ms=frame_length_ms,
                          frame_shift_ms=frame_shift_ms, wave_scale=wave_scale)
        self.win_length = int(sample_rate * frame_length_ms / 1000)
        self.hop_length = int(sample_rate * frame_shift_ms / 1000)
        _require_positive('Fbank', samples_per_frame=self.win_length, samples_per_shift=self.hop_length)
        self.padded_size = 1 << (self.win_length - 1).bit_length()
        nyquist = sample_rate / 2
        high = high_freq if high_freq > 0 else nyquist + high_freq
        if not 0 <= low_freq < high <= nyquist:
            raise ConfigError(f"Fbank: need 0 <= low_freq < high_freq <= {nyquist} (Nyquist); got "
                              f"low_freq={low_freq}, high_freq={high_freq} (-> {high})")
        if dither < 0:
            raise ConfigError(f"Fbank: 'dither' must be >= 0, got {dither}")
        self.num_mel_bins = int(num_mel_bins)
        self.preemph = float(preemph)
        self.remove_dc_offset = bool(remove_dc_offset)
        self.use_energy = bool(use_energy)
        self.dither = float(dither)
        self.wave_scale = float(wave_scale)
        window = KALDI_WINDOWS.get_class(window_type, where='Fbank: ')(self.win_length)
        # DC removal and pre-emphasis are linear, so scaling the window scales the whole frame.
        self.register_buffer('scaled_window', (window * wave_scale).float(), persistent=False)
        banks = kaldi_mel_banks(self.num_mel_bins, self.padded_size, sample_rate, low_freq, high)
        self.register_buffer('mel_banks', banks.float(), persistent=False)
        self.register_buffer('frame_to_spectrum', self._frame_to_spectrum(window * wave_scale).float(),
                             persistent=False)

    def _frame_to_spectrum(self, scaled_window):
        """[win, 2 * bins] float64: DC removal, pre-emphasis, window and the DFT of the zero-padded
        frame as one matrix, real parts then imaginary parts (all four steps are linear)."""
        win = self.win_length
        transform = torch.eye(win, dtype=torch.float64)
        if self.remove_dc_offset:
            transform = transform - 1.0 / win
        emphasis = torch.eye(win, dtype=torch.float64) - self.preemph * torch.diag(torch.ones(win - 1,
                                                                                           dtype=torch.float64), 1)
        emphasis[0, 0] = 1.0 - self.preemph  # Kaldi pre-emphasises the first sample against itself
        transform = transform @ emphasis * scaled_window
        angle = 2 * math.pi / self.padded_size * torch.outer(
            torch.arange(win, dtype=torch.float64), torch.arange(self.padded_size // 2 + 1, dtype=torch.float64))
        return transform @ torch.cat([angle.cos(), -angle.sin()], dim=1)

    @property
    def feature_dim(self) -> int:
        return self.num_mel_bins + int(self.use_energy)

    def frame_lengths(self, lengths):
        return ((lengths - self.win_length) // self.hop_length + 1).clamp(min=0)

    def _compute(self, waveforms, lengths, frame_lengths):
        if waveforms.shape[1] < self.win_length:  # no utterance is one frame long
            return waveforms.new_zeros(waveforms.shape[0], 0, self.feature_dim)
        if self.training and self.dither > 0:
            # Kaldi dithers each frame apart; dithering the waveform gives every frame the same
            # per-sample noise level for one pass over the samples instead of one per frame.
            waveforms = waveforms + torch.randn_like(waveforms) * (self.dither / self.wave_scale)
        frames = waveforms.unfold(1, self.win_length, self.hop_length)
        mean = frames.mean(dim=-1) if self.remove_dc_offset else None
        if torch.compiler.is_exporting():
            # ONNX Runtime's DFT takes ~30x longer than its matmul here (60 ms for 16 x 3 s against
            # torch's 9 ms), so an exported graph transforms frames with one matrix product instead.
            spectrum = frames @ self.frame_to_spectrum.to(frames.device, torch.float32)
            real, imaginary = spectrum.chunk(2, dim=-1)
        else:
            spectrum = torch.fft.rfft(self._windowed_frames(waveforms, frames, mean))
            real, imaginary = spectrum.real, spectrum.imag
        power = real.square() + imaginary.square()
        features = (power @ self.mel_banks.to(power.device, torch.float32)).clamp_(min=FLOAT_EPS).log_()
        if self.use_energy:  # Kaldi's raw energy: after DC removal, before pre-emphasis and window
            centered = frames if mean is None else frames - mean[..., None]
            energy = centered.square().sum(dim=-1) * self.wave_scale ** 2
            features = torch.cat([energy.clamp(min=FLOAT_EPS).log()[..., None], features], dim=-1)
        return features

    def _windowed_frames(self, waveforms, frames, mean):
        """[B, T, padded_size]: each frame DC-removed, pre-emphasised, windowed and zero-padded.

        The three steps are linear, so they are folded into one pass per frame instead of one pass
        each: pre-emphasising overlapping frames is pre-emphasising the waveform once (except each
        frame's first sample, which Kaldi pre-emphasises against itself), and removing the DC offset
        before pre-emphasis equals subtracting ``(1 - preemph) * mean`` after it.
        """
        win, hop = self.win_length, self.hop_length
        window = self.scaled_window.to(frames.device, torch.float32)
        windowed = frames.new_empty(*frames.shape[:2], self.padded_size)
        windowed[..., win:] = 0
        if self.preemph != 0:
            emphasized = waveforms[:, 1:] - self.preemph * waveforms[:, :-1]
            torch.mul(emphasized.unfold(1, win - 1, hop), window[1:], out=windowed[..., 1:win])
            windowed[..., 0] = frames[..., 0] * ((1 - self.preemph) * window[0])
        else:
            torch.mul(frames, window, out=windowed[..., :win])
        if mean is not None:
            windowed[..., :win] -= ((1 - self.preemph) * mean)[..., None] * window
        return windowed


# ---------------------------------------------------------------- librosa-style centered STFT


@STFT_WINDOWS.register(name='hann')
def _hann_periodic(size):
    return torch.hann_window(size, periodic=True, dtype=torch.float64)


@STFT_WINDOWS.register(name='hamming')
def _hamming_periodic(size):
    return torch.hamming_window(size, periodic=True, dtype=torch.float64)


@STFT_WINDOWS.register(name='blackman')
def _blackman_periodic(size):
    return torch.blackman_window(size, periodic=True, dtype=torch.float64)


@STFT_WINDOWS.register(name='rectangular')
def _rectangular_periodic(size):
    return torch.ones(size, dtype=torch.float64)


def _reflect_index(index, lengths):
    """np.pad 'reflect' (repeated as needed) of positions ``index`` [B, K] into rows of ``lengths``."""
    period = (2 * (lengths[:, None] - 1)).clamp(min=1)
    folded = index.remainder(period)
    return torch.where(folded < lengths[:, None], folded, period - folded)


@PAD_MODES.register(name='reflect')
def _pad_reflect(waveforms, lengths, pad):
    """Reflect-pad each row about its own ends (not the batch's padded end)."""
    batch, num_samples = waveforms.shape
    offsets = torch.arange(1, pad + 1, device=waveforms.device).expand(batch, pad)
    last = lengths[:, None] - 1
    # Zero-length rows give out-of-range indices; their frames are masked anyway.
    left_index = _reflect_index(-offsets.flip(-1), lengths).clamp(0, num_samples - 1)
    right_index = _reflect_index(last + offsets, lengths).clamp(0, num_samples - 1)
    padded = F.pad(waveforms, (pad, pad))
    padded[:, :pad] = waveforms.gather(1, left_index)
    return padded.scatter(1, last + offsets + pad, waveforms.gather(1, right_index))


@PAD_MODES.register(name='constant')
def _pad_constant(waveforms, lengths, pad):
    return F.pad(waveforms, (pad, pad))  # samples past each length are already zeroed


class _CenteredSTFT(_Featurizer):
    """|STFT|^power of centered frames, as ``librosa.stft(center=True)`` computes them.

    Frame t is centered on sample ``t * hop_length``; an utterance of n > 0 samples has
    ``1 + (n + 2 * (n_fft // 2) - n_fft) // hop_length`` frames (``1 + n // hop_length`` for an
    even ``n_fft``). A ``win_length`` window is zero-padded to ``n_fft`` in the middle.
    """

    def __init__(self, sample_rate, n_fft, win_length, hop_length, window, pad_mode, power):
        super().__init__(sample_rate)
        owner = type(self).__name__
        win_length = n_fft if win_length is None else win_length
        _require_positive(owner, n_fft=n_fft, win_length=win_length, hop_length=hop_length, power=power)
        if win_length > n_fft:
            raise ConfigError(f"{owner}: 'win_length' ({win_length}) must be <= 'n_fft' ({n_fft})")
        self.n_fft, self.win_length, self.hop_length = int(n_fft), int(win_length), int(hop_length)
        self.power = float(power)
        self.pad = PAD_MODES.get_class(pad_mode, where=f'{owner}: ')
        left = (self.n_fft - self.win_length) // 2
        taper = STFT_WINDOWS.get_class(window, where=f'{owner}: ')(self.win_length)
        window = F.pad(taper, (left, self.n_fft - self.win_length - left))
        self.register_buffer('window', window.float(), persistent=False)

    def frame_lengths(self, lengths):
        frames = (lengths + 2 * (self.n_fft // 2) - self.n_fft) // self.hop_length + 1
        return torch.where(lengths > 0, frames, torch.zeros_like(frames))

    def _spectrogram(self, waveforms, lengths):
        """|STFT|^power as [B, T, n_fft // 2 + 1]."""
        # Zeroing the padding keeps garbage out of the constant-padded end frames.
        waveforms = torch.where(_valid_mask(lengths, waveforms.shape[1]), waveforms, waveforms.new_zeros(()))
        padded = self.pad(waveforms, lengths, self.n_fft // 2)
        frames = padded.unfold(1, self.n_fft, self.hop_length)
        spectrum = torch.fft.rfft(frames * self.window.to(frames.device, torch.float32))
        power = spectrum.real.square() + spectrum.imag.square()
        return power if self.power == 2 else power.pow(self.power / 2)


def slaney_mel(hz):
    """librosa's default (Slaney) mel scale: linear below 1 kHz, logarithmic above."""
    linear = hz * 3 / 200
    logarithmic = 15 + torch.log(hz.clamp(min=1000) / 1000) * 27 / math.log(6.4)
    return torch.where(hz >= 1000, logarithmic, linear)


def slaney_mel_to_hz(mel):
    linear = mel * 200 / 3
    logarithmic = 1000 * torch.exp((mel - 15) * math.log(6.4) / 27)
    return torch.where(mel >= 15, logarithmic, linear)


def htk_mel(hz):
    return 2595 * torch.log10(1 + hz / 700)


def htk_mel_to_hz(mel):
    return 700 * (10 ** (mel / 2595) - 1)


def librosa_mel_banks(sample_rate, n_fft, n_mels, fmin, fmax, htk, norm):
    """``librosa.filters.mel(...).T`` as a [n_fft//2 + 1, n_mels] float64 matrix."""
    to_mel, to_hz = (htk_mel, htk_mel_to_hz) if htk else (slaney_mel, slaney_mel_to_hz)
    fft_hz = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = to_mel(torch.tensor([float(fmin), float(fmax)], dtype=torch.float64))
    mel_hz = to_hz(torch.linspace(float(edges[0]), float(edges[1]), n_mels + 2, dtype=torch.float64))
    widths = mel_hz.diff()
    ramps = mel_hz[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = torch.minimum(rising, falling).clamp(min=0)
    if norm == 'slaney':  # equal area per filter
        weights = weights * (2 / (mel_hz[2:] - mel_hz[:-2]))[:, None]
    return weights.T


class _MelBase(_CenteredSTFT):
    def __init__(self, sample_rate, n_fft, win_length, hop_length, window, pad_mode, power,
                 n_mels, fmin, fmax, htk, norm):
        super().__init__(sample_rate, n_fft, win_length, hop_length, window, pad_mode, power)
        owner = type(self).__name__
        _require_positive(owner, n_mels=n_mels)
        fmax = sample_rate / 2 if fmax is None else fmax
        if not 0 <= fmin < fmax <= sample_rate / 2:
            raise ConfigError(f"{owner}: need 0 <= fmin < fmax <= {sample_rate / 2} (Nyquist); "
                              f"got fmin={fmin}, fmax={fmax}")
        if norm not in ('slaney', None):
            raise ConfigError(f"{owner}: 'norm' must be 'slaney' or None, got {norm!r}")
        self.n_mels = int(n_mels)
        banks = librosa_mel_banks(sample_rate, self.n_fft, self.n_mels, fmin, fmax, htk, norm)
        self.register_buffer('mel_banks', banks.float(), persistent=False)

    def _mel(self, waveforms, lengths):
        power = self._spectrogram(waveforms, lengths)
        return power @ self.mel_banks.to(power.device, torch.float32)


@FEATURIZERS.register(name='Spectrogram')
class Spectrogram(_CenteredSTFT):
    """Centered STFT magnitude (``power=1``, the default; ``power=2`` for power), matching
    ``np.abs(librosa.stft(y, n_fft, hop_length, win_length, window, center=True, pad_mode))``.
    Defaults are 25 ms Hann windows every 10 ms at 16 kHz, FFT size 512, reflect padding.
    """

    def __init__(self, sample_rate=16000, n_fft=512, win_length=400, hop_length=160, window='hann',
                 pad_mode='reflect', power=1.0):
        super().__init__(sample_rate, n_fft, win_length, hop_length, window, pad_mode, power)

    @property
    def feature_dim(self) -> int:
        return self.n_fft // 2 + 1

    def _compute(self, waveforms, lengths, frame_lengths):
        return self._spectrogram(waveforms, lengths)


@FEATURIZERS.register(name='MelSpectrogram')
class MelSpectrogram(_MelBase):
    """Mel spectrogram matching ``librosa.feature.melspectrogram(center=True)`` with the same
    arguments: Slaney mel scale and Slaney area norm by default (``htk=True``/``norm=None``
    switch them), power 2, reflect padding, 0 Hz to Nyquist.

    ``log=True`` (default) returns ``ln(max(mel, log_floor))``; ``log=False`` the mel power.
    """

    def __init__(self, sample_rate=16000, n_fft=512, win_length=400, hop_length=160, window='hann',
                 pad_mode='reflect', n_mels=80, fmin=0.0, fmax=None, htk=False, norm='slaney', power=2.0,
                 log=True, log_floor=1e-10):
        super().__init__(sample_rate, n_fft, win_length, hop_length, window, pad_mode, power,
                         n_mels, fmin, fmax, htk, norm)
        _require_positive('MelSpectrogram', log_floor=log_floor)
        self.log = bool(log)
        self.log_floor = float(log_floor)

    @property
    def feature_dim(self) -> int:
        return self.n_mels

    def _compute(self, waveforms, lengths, frame_lengths):
        mel = self._mel(waveforms, lengths)
        return mel.clamp(min=self.log_floor).log() if self.log else mel


def dct_matrix(n_mels, n_mfcc, lifter):
    """Orthonormal DCT-II as a [n_mels, n_mfcc] matrix (scipy ``dct(norm='ortho')``), with
    librosa's sinusoidal liftering folded into its columns."""
    n = torch.arange(n_mels, dtype=torch.float64)
    k = torch.arange(n_mfcc, dtype=torch.float64)
    basis = torch.cos(math.pi / n_mels * (n[:, None] + 0.5) * k[None, :]) * math.sqrt(2 / n_mels)
    basis[:, 0] /= math.sqrt(2)
    if lifter > 0:
        basis = basis * (1 + lifter / 2 * torch.sin(math.pi * (k + 1) / lifter))
    return basis


@FEATURIZERS.register(name='MFCC')
class MFCC(_MelBase):
    """MFCCs matching ``librosa.feature.mfcc(y, sr, n_mfcc, lifter, ...)`` with the
    :class:`MelSpectrogram` defaults: power mel -> ``10 log10(max(mel, 1e-10))`` -> clipped to
    ``top_db`` below the utterance's loudest valid bin (librosa's ``power_to_db`` default of 80;
    None disables it) -> orthonormal DCT-II, first ``n_mfcc`` coefficients.
    """

    def __init__(self, sample_rate=16000, n_fft=512, win_length=400, hop_length=160, window='hann',
                 pad_mode='reflect', n_mels=80, fmin=0.0, fmax=None, htk=False, norm='slaney', n_mfcc=40,
                 lifter=0.0, top_db=80.0):
        super().__init__(sample_rate, n_fft, win_length, hop_length, window, pad_mode, 2.0,
                         n_mels, fmin, fmax, htk, norm)
        _require_positive('MFCC', n_mfcc=n_mfcc)
        if n_mfcc > n_mels:
            raise ConfigError(f"MFCC: 'n_mfcc' ({n_mfcc}) must be <= 'n_mels' ({n_mels})")
        if lifter < 0 or (top_db is not None and top_db < 0):
            raise ConfigError(f"MFCC: 'lifter' and 'top_db' must be >= 0, got {lifter}, {top_db}")
        self.n_mfcc = int(n_mfcc)
        self.top_db = top_db
        self.register_buffer('dct', dct_matrix(self.n_mels, self.n_mfcc, lifter).float(), persistent=False)

    @property
    def feature_dim(self) -> int:
        return self.n_mfcc

    def _compute(self, waveforms, lengths, frame_lengths):
        db = 10 * torch.log10(self._mel(waveforms, lengths).clamp(min=1e-10))
        if self.top_db is not None:
            valid = _valid_mask(frame_lengths, db.shape[1])[..., None]
            loudest = torch.where(valid, db, db.new_tensor(-math.inf)).amax(dim=(1, 2), keepdim=True)
            db = torch.maximum(db, loudest - self.top_db)
        return db @ self.dct.to(db.device, torch.float32)


# ---------------------------------------------------------------- front-end used by models


class AudioFeaturizer(nn.Module):
    """The configured featurizer (``FEATURIZERS[feature_method](**method_args)``) plus optional
    per-utterance mean normalisation over valid frames only (padded frames stay 0)."""

    def __init__(self, feature_method='Fbank', method_args=None, mean_norm=True):
        super().__init__()
        method_args = {} if method_args is None else method_args
        if not isinstance(method_args, Mapping):
            raise ConfigError(f"AudioFeaturizer: 'method_args' must be a mapping of argument names, "
                              f"got {type(method_args).__name__}")
        self.feature_method = feature_method
        self.featurizer = FEATURIZERS.build(feature_method, where='AudioFeaturizer: ', **method_args)
        self.mean_norm = bool(mean_norm)

    @property
    def feature_dim(self) -> int:
        return self.featurizer.feature_dim

    @property
    def sample_rate(self) -> int:
        return self.featurizer.sample_rate

    def num_frames(self, num_samples: int) -> int:
        return self.featurizer.num_frames(num_samples)

    def forward(self, waveforms, lengths=None):
        features, frame_lengths = self.featurizer(waveforms, lengths)
        if self.mean_norm:
            valid = _valid_mask(frame_lengths, features.shape[1])[..., None]
            counts = frame_lengths.clamp(min=1).to(features.dtype)[:, None, None]
            mean = features.sum(dim=1, keepdim=True) / counts  # padded frames are already 0
            features = torch.where(valid, features - mean, features.new_zeros(()))
        return features, frame_lengths
