"""``WaveAugment``: reverberation, noise and volume on a batch of waveforms, on the training device."""
import torch
from torch import nn

from mvector.training.augment.noise import ClipBank, GENERATED_NOISES, load_clip_folder
from mvector.training.augment.ops import mix_at_snr, reverberate
from mvector.training.augment.rir import load_rir_bank


# The sections WaveAugment applies on the training device.
DEVICE_SECTIONS = ("reverb", "noise", "volume")


class WaveAugment(nn.Module):
    """Reverberation -> noise -> volume on a zero-padded batch ``[B, N]``, on the batch's device.

    The waveform augmentation that keeps lengths and labels, batched so that it costs a GPU next to
    nothing and never holds up the data loader (speed perturbation, which changes both, runs in the
    loader: ``SpeedPerturb``). Each row is reverberated, mixed with noise and changed in volume,
    each with its configured probability. Noise comes from ``noise.noise_dir`` when given, otherwise
    from the generated kinds (coloured noise, or babble made of other rows of the batch); RIRs from
    ``reverb.rir_dir`` or the simulated bank. Draws come from the global torch RNG of the batch's
    device, like SpecAugment's, whose state a training checkpoint holds. Identity in eval mode.
    """

    def __init__(self, conf: dict, sample_rate: int = 16000, where: str = "<augmentation config>",
                 rir_cache_dir=None):
        super().__init__()
        self.conf = conf
        noise, reverb = conf["noise"], conf["reverb"]
        self.noise_bank = (ClipBank(load_clip_folder(noise["noise_dir"], "noise.noise_dir", where, sample_rate))
                           if noise["noise_dir"] and noise["prob"] > 0 else None)
        self.generated = {name: GENERATED_NOISES[name]() for name in noise["generated"]}
        self.rir_bank = None
        if reverb["prob"] > 0:
            self.rir_bank = ClipBank(load_clip_folder(reverb["rir_dir"], "reverb.rir_dir", where, sample_rate)
                                     if reverb["rir_dir"] else
                                     load_rir_bank(sample_rate, reverb["num_simulated_rirs"], rir_cache_dir))

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor = None) -> torch.Tensor:
        if not self.training:
            return waveforms
        batch, size = waveforms.shape
        device = waveforms.device
        if lengths is None:
            lengths = torch.full((batch,), size, dtype=torch.long, device=device)
        lengths = lengths.to(device=device, dtype=torch.long)
        conf = self.conf
        out = waveforms.clone()
        rows = self._draw_rows(batch, conf["reverb"]["prob"], device)
        if len(rows):
            bank = self.rir_bank.to(device)
            picks = torch.randint(len(bank), (len(rows),), device=device)
            out[rows] = reverberate(out[rows], lengths[rows], bank.padded(picks))
        rows = self._draw_rows(batch, conf["noise"]["prob"], device)
        if len(rows):
            out[rows] = self._add_noise(out, waveforms, lengths, rows)
        rows = self._draw_rows(batch, conf["volume"]["prob"], device)
        if len(rows):
            low, high = conf["volume"]["min_gain_db"], conf["volume"]["max_gain_db"]
            gain_db = low + (high - low) * torch.rand(len(rows), device=device)
            out[rows] = out[rows] * (10.0 ** (gain_db / 20.0))[:, None].to(out.dtype)
        return out

    @staticmethod
    def _draw_rows(batch, prob, device) -> torch.Tensor:
        chosen = torch.rand(batch, device=device) < prob
        return chosen.nonzero().flatten()

    def _add_noise(self, out, dry, lengths, rows) -> torch.Tensor:
        """The chosen rows of ``out`` mixed with noise at a random SNR; babble is made of ``dry``'s rows."""
        device = out.device
        size = out.shape[1]
        conf = self.conf["noise"]
        if self.noise_bank is not None:
            bank = self.noise_bank.to(device)
            picks = torch.randint(len(bank), (len(rows),), device=device)
            noise = bank.crops(picks, size)
        else:
            kinds = [k for k in self.generated.values() if not k.needs_other_rows or len(dry) > 1]
            if not kinds:
                return out[rows]
            noise = torch.zeros(len(rows), size, device=device)
            choice = torch.randint(len(kinds), (len(rows),), device=device)
            for index, kind in enumerate(kinds):
                members = (choice == index).nonzero().flatten()
                if len(members):
                    noise[members] = kind(dry, lengths, rows[members], conf)
        snr_db = conf["min_snr_db"] + (conf["max_snr_db"] - conf["min_snr_db"]) * torch.rand(
            len(rows), device=device)
        return mix_at_snr(out[rows], noise, lengths[rows], snr_db)
