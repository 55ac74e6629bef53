"""Kaldi-compatible filterbank features (``Fbank``), batched, matching kaldi-native-fbank."""
import math

import torch
import torch.nn.functional as F

from mvector.errors import ConfigError
from mvector.features.base import FEATURIZERS, FLOAT_EPS, KALDI_WINDOWS, Featurizer, require_positive


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
class Fbank(Featurizer):
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
        require_positive('Fbank', num_mel_bins=num_mel_bins, frame_length_ms=frame_length_ms,
                          frame_shift_ms=frame_shift_ms, wave_scale=wave_scale)
        self.win_length = int(sample_rate * frame_length_ms / 1000)
        self.hop_length = int(sample_rate * frame_shift_ms / 1000)
        require_positive('Fbank', samples_per_frame=self.win_length, samples_per_shift=self.hop_length)
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
            # ONNX Runtime's DFT is over an order of magnitude slower than its matmul on this frame
            # transform, so an exported graph transforms frames with one matrix product instead.
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
