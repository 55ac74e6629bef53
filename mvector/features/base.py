"""What every featurizer shares: the registries, batch checks, valid-frame masks and the base class."""
import torch
from torch import nn

from mvector.errors import AudioError, ConfigError
from mvector.registry import Registry


FEATURIZERS = Registry('feature method')


KALDI_WINDOWS = Registry('Kaldi window type')


STFT_WINDOWS = Registry('STFT window')


PAD_MODES = Registry('pad mode')


# Kaldi floors energies at float32 epsilon before the log.
FLOAT_EPS = torch.finfo(torch.float32).eps


def require_positive(owner, **values):
    for key, value in values.items():
        if not value > 0:
            raise ConfigError(f"{owner}: '{key}' must be > 0, got {value!r}")


def valid_mask(lengths, size):
    """[B, size] bool: True where the index is inside the row's length."""
    return torch.arange(size, device=lengths.device) < lengths[:, None]


def normalize_over_time(x, lengths, scale=False, ddof=0, eps=1e-7):
    """``x`` ``[B, T, ...]`` minus each row's mean over its first ``lengths`` steps (and divided by their
    standard deviation with ``ddof`` when ``scale``); padding is ignored and comes out 0."""
    valid = valid_mask(lengths, x.shape[1]).reshape(*x.shape[:2], *(1,) * (x.dim() - 2))
    counts = lengths.clamp(min=1).to(x.dtype).reshape(-1, *(1,) * (x.dim() - 1))
    centred = x - (x * valid).sum(1, keepdim=True) / counts
    if scale:
        var = (centred.square() * valid).sum(1, keepdim=True) / (counts - ddof).clamp(min=1)
        centred = centred / torch.sqrt(var + eps)
    return torch.where(valid, centred, x.new_zeros(()))


class Featurizer(nn.Module):
    """Shared input checks, float32/no-autocast compute and masking of padded frames.

    ``exportable``: whether it exports to ONNX and OpenVINO (``export_refusal`` says why not);
    ``may_leave_parameters_unused``: whether a training step may leave trainable tensors without gradients.
    """

    exportable = True
    export_refusal = None
    may_leave_parameters_unused = False

    def __init__(self, sample_rate):
        super().__init__()
        require_positive(type(self).__name__, sample_rate=sample_rate)
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

    def pinned_args(self) -> dict:
        """Constructor arguments that pin down what was loaded (an SSL model's weights), written into
        the config of every model directory trained with it."""
        return {}

    def num_frames(self, num_samples: int) -> int:
        return int(self.frame_lengths(torch.tensor([int(num_samples)]))[0])

    def forward(self, waveforms, lengths=None):
        waveforms, lengths = check_batch(waveforms, lengths, type(self).__name__)
        frame_lengths = self.frame_lengths(lengths)
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            features = self._compute(waveforms.float(), lengths, frame_lengths)
        valid = valid_mask(frame_lengths, features.shape[1])
        features = torch.where(valid[..., None], features, features.new_zeros(()))
        return features, frame_lengths


def check_batch(waveforms, lengths, owner):
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
