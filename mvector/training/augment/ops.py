"""Batched waveform operations on the training device, padding-aware: power, SNR mixing, reverberation,
coloured noise, looped crops."""
import torch


def valid_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def mean_power(waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``[B]`` mean square over each row's valid samples (0 for an empty row)."""
    valid = valid_mask(lengths, waveforms.shape[1])
    return (waveforms.float().square() * valid).sum(dim=1) / lengths.clamp(min=1)


def mix_at_snr(speech: torch.Tensor, noise: torch.Tensor, lengths: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """``speech + k * noise`` per row, ``k`` such that 10 log10(P_speech / P_k*noise) = ``snr_db[row]``
    over the valid samples. Rows whose speech or noise is silent come back unchanged."""
    speech_power, noise_power = mean_power(speech, lengths), mean_power(noise, lengths)
    usable = (speech_power > 0) & (noise_power > 0)
    scale = torch.sqrt(speech_power / (noise_power.clamp(min=1e-20) * 10.0 ** (snr_db / 10.0)))
    scale = torch.where(usable, scale, torch.zeros_like(scale))
    return speech + (scale[:, None] * noise * valid_mask(lengths, speech.shape[1])).to(speech.dtype)


def reverberate(waveforms: torch.Tensor, lengths: torch.Tensor, rirs: torch.Tensor) -> torch.Tensor:
    """Each row convolved with its room impulse response (``rirs[B, L]``, zero-padded), keeping the
    direct path (the RIR's largest tap) on the original timing and the RMS level unchanged, so labels,
    crops and dB normalisation still line up. A row whose reverberant copy is silent is kept dry."""
    batch, size = waveforms.shape
    fft_size = 1 << (size + rirs.shape[1] - 2).bit_length()  # >= the full convolution's length
    spectrum = torch.fft.rfft(waveforms.float(), fft_size) * torch.fft.rfft(rirs.float(), fft_size)
    full = torch.fft.irfft(spectrum, fft_size)
    direct = rirs.abs().argmax(dim=1)
    wet = full.gather(1, direct[:, None] + torch.arange(size, device=waveforms.device)[None, :])
    wet = wet * valid_mask(lengths, size)
    wet_power, dry_power = mean_power(wet, lengths), mean_power(waveforms, lengths)
    gain = torch.sqrt(dry_power / wet_power.clamp(min=1e-20))
    return torch.where((wet_power > 0)[:, None], wet * gain[:, None], waveforms.float()).to(waveforms.dtype)


def coloured_noise(rows: int, size: int, exponents: torch.Tensor) -> torch.Tensor:
    """``[rows, size]`` Gaussian noise whose power spectrum falls as 1/f**exponent (0 white, 1 pink,
    2 brown), shaped by scaling the spectrum of white noise; unit RMS per row."""
    device = exponents.device
    white = torch.randn(rows, size, device=device)
    freqs = torch.fft.rfftfreq(size, device=device)
    if size > 1:
        freqs[0] = freqs[1]  # no infinite DC gain
    else:
        freqs[0] = 1.0
    shaped = torch.fft.irfft(torch.fft.rfft(white) * freqs[None, :] ** (-exponents[:, None] / 2.0), n=size)
    return shaped / shaped.square().mean(dim=1, keepdim=True).sqrt().clamp(min=1e-20)


def loop_crops(samples: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor, size: int) -> torch.Tensor:
    """``[R, size]`` stretches of clips stored end to end in ``samples`` (clip r at ``offsets[r]``,
    ``lengths[r]`` long): from a random start when the clip is longer, looped when it is shorter."""
    spans = torch.where(lengths >= size, lengths - size + 1, lengths)
    starts = (torch.rand(len(lengths), device=lengths.device) * spans).long()
    positions = (starts[:, None] + torch.arange(size, device=lengths.device)[None, :]) % lengths[:, None]
    return samples[offsets[:, None] + positions].float()
