"""librosa-style features on a centred STFT: ``Spectrogram``, ``MelSpectrogram`` and ``MFCC``."""
import math

import torch
import torch.nn.functional as F

from mvector.errors import ConfigError
from mvector.features.base import FEATURIZERS, PAD_MODES, STFT_WINDOWS, Featurizer, require_positive, valid_mask


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


class _CenteredSTFT(Featurizer):
    """|STFT|^power of centered frames, as ``librosa.stft(center=True)`` computes them.

    Frame t is centered on sample ``t * hop_length``; an utterance of n > 0 samples has
    ``1 + (n + 2 * (n_fft // 2) - n_fft) // hop_length`` frames (``1 + n // hop_length`` for an
    even ``n_fft``). A ``win_length`` window is zero-padded to ``n_fft`` in the middle.
    """

    def __init__(self, sample_rate, n_fft, win_length, hop_length, window, pad_mode, power):
        super().__init__(sample_rate)
        owner = type(self).__name__
        win_length = n_fft if win_length is None else win_length
        require_positive(owner, n_fft=n_fft, win_length=win_length, hop_length=hop_length, power=power)
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
        waveforms = torch.where(valid_mask(lengths, waveforms.shape[1]), waveforms, waveforms.new_zeros(()))
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
        require_positive(owner, n_mels=n_mels)
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
        require_positive('MelSpectrogram', log_floor=log_floor)
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
        require_positive('MFCC', n_mfcc=n_mfcc)
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
            valid = valid_mask(frame_lengths, db.shape[1])[..., None]
            loudest = torch.where(valid, db, db.new_tensor(-math.inf)).amax(dim=(1, 2), keepdim=True)
            db = torch.maximum(db, loudest - self.top_db)
        return db @ self.dct.to(db.device, torch.float32)
