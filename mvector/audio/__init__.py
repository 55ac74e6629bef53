"""Audio front-end: turn a file, bytes, a file object, an array or a tensor into float32 mono
samples at the model's rate, or raise AudioError naming the input and what is wrong with it."""
import math
import os
import sys

import numpy as np
import soundfile as sf

from mvector.audio.decode import (DEFAULT_MAX_DURATION, MAX_HEADER_FRAMES, TRUNCATION_TOLERANCE, av_duration, decode_file,
                                  file_handle, rewind, tell, too_long)
from mvector.audio.signal import mix_to_mono, normalize_db, positive_rate, resample, vad_trim
from mvector.errors import AudioError, ConfigError


# The file endings taken for audio wherever a folder is scanned (corpora, noise banks, calibration sets).
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma")


__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioError",
    "DEFAULT_MAX_DURATION",
    "MAX_CHANNELS",
    "SILENCE_PEAK",
    "TRUNCATION_TOLERANCE",
    "audio_duration",
    "load_audio",
    "normalize_db",
    "resample",
    "vad_trim",
]


# Peak |sample| below this (about -80 dBFS) carries no usable speech: the input "is silent".
SILENCE_PEAK = 1e-4
# A 2-D array is (samples, channels) or (channels, samples); its smaller side is the channel
# axis, and more channels than this means the array is not audio laid out either way.
MAX_CHANNELS = 8
# Full-scale of integer PCM: int arrays are divided by it to land in [-1, 1).
_INT_FULL_SCALE = {np.dtype(np.int8): 2.0**7, np.dtype(np.int16): 2.0**15, np.dtype(np.int32): 2.0**31}
_FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def load_audio(
    source,
    sample_rate: int | None = None,
    target_sample_rate: int | None = 16000,
    *,
    min_duration: float = 0.0,
    max_duration: float | None = DEFAULT_MAX_DURATION,
    normalize_db: float | None = None,
    vad: bool = False,
    name: str | None = None,
) -> np.ndarray:
    """Decode ``source`` to float32 mono 1-D samples at ``target_sample_rate``.

    ``source``: a file path (anything soundfile or FFmpeg reads), the bytes of a whole file,
    a binary file object (read from its current position, not closed), or a numpy array /
    torch tensor of samples, 1-D or 2-D with up to MAX_CHANNELS channels on either axis.
    ``sample_rate`` is required for arrays and tensors; files carry their own, so it is
    ignored for them. ``target_sample_rate=None`` keeps the native rate.
    ``vad=True`` trims leading and trailing non-speech (see vad_trim); ``min_duration``
    (seconds) is checked after it. Longer than ``max_duration`` seconds (before trimming and
    resampling; None: no limit) is an AudioError, raised as soon as decoding passes it. ``normalize_db`` scales to that RMS level in dBFS.
    ``name`` names the input in error messages.
    A float32 array input that needs no change is returned as is, sharing its memory.
    """
    if target_sample_rate is not None:
        target_sample_rate = positive_rate(target_sample_rate, "target_sample_rate", ConfigError)
    if not isinstance(min_duration, (int, float)) or not min_duration >= 0:
        raise ConfigError(f"min_duration must be a number of seconds >= 0, got {min_duration!r}")
    if max_duration is not None and (isinstance(max_duration, bool) or not isinstance(max_duration, (int, float))
                                     or not max_duration > 0):
        raise ConfigError(f"max_duration must be a number of seconds > 0 or None, got {max_duration!r}")
    name = name or _describe(source)

    array = _as_numpy(source)
    if array is not None:
        rate = _array_rate(sample_rate, name)
        wav = _array_to_mono(array, name)
        if max_duration is not None and len(wav) > max_duration * rate:
            raise too_long(name, max_duration)
    else:
        wav, rate = decode_file(file_handle(source, name), name, max_duration)

    _check_samples(wav, name)
    if vad:
        wav = vad_trim(wav, rate)
    duration = len(wav) / rate
    if duration < min_duration:
        trimmed = " after VAD trimming" if vad else ""
        raise AudioError(
            f"{name}: too short{trimmed}: {duration:.3f} s < min_duration {min_duration:g} s"
        )
    if target_sample_rate is not None:
        wav = resample(wav, rate, target_sample_rate)
    if normalize_db is not None:
        wav = _normalize_db(wav, normalize_db)
    return np.ascontiguousarray(wav, dtype=np.float32)


def audio_duration(source, sample_rate: int | None = None, *, name: str | None = None,
                   max_duration: float | None = DEFAULT_MAX_DURATION) -> float:
    """Duration of ``source`` in seconds, from the file header or container metadata
    where they have it (no full decode); arrays and tensors need ``sample_rate``. A stream
    without a length is decoded to count it, stopping just past ``max_duration``: then the
    figure returned is only known to exceed it."""
    name = name or _describe(source)
    array = _as_numpy(source)
    if array is not None:
        rate = _array_rate(sample_rate, name)
        channel_axis = _channel_axis(array, name)
        samples = array.shape[0] if channel_axis is None else array.shape[1 - channel_axis]
        return samples / rate
    handle = file_handle(source, name)
    start = tell(handle)
    try:
        with sf.SoundFile(handle) as sound:
            if sound.frames <= MAX_HEADER_FRAMES:
                return sound.frames / sound.samplerate
            sf_error = RuntimeError(f"header declares {sound.frames} frames")  # no length: count below
    except (sf.SoundFileError, RuntimeError) as error:
        sf_error = error
    rewind(handle, start)
    return av_duration(handle, start, name, sf_error, max_duration)


def _describe(source) -> str:
    """How an input is named in error messages when the caller gives no name."""
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<bytes: {memoryview(source).nbytes} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array shape {source.shape} {source.dtype}>"
    if _is_tensor(source):
        return f"<tensor shape {tuple(source.shape)} {source.dtype}>"
    if hasattr(source, "read"):
        file_name = getattr(source, "name", None)
        label = repr(file_name) if isinstance(file_name, str) else type(source).__name__
        return f"<file object {label}>"
    if isinstance(source, (int, float, bool, type(None))):
        return f"<{type(source).__name__} {source!r}>"
    return f"<{type(source).__name__} object>"  # its repr may carry a heap address or contents


def _is_tensor(source) -> bool:
    # torch is only imported by whoever made the tensor: no import cost for file users.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(source, torch.Tensor)


def _as_numpy(source) -> np.ndarray | None:
    """The samples of an array or tensor input; None for any other kind of source."""
    if isinstance(source, np.ndarray):
        return source
    if _is_tensor(source):
        tensor = source.detach().cpu()
        if tensor.is_floating_point():
            # bfloat16 has no numpy dtype; float32 is what we return anyway.
            tensor = tensor.float()
        return tensor.numpy()
    return None


def _array_rate(sample_rate, name: str) -> int:
    """Samples carry no rate of their own: the caller must say it."""
    if sample_rate is None:
        raise AudioError(f"{name}: sample_rate is required for array and tensor input")
    return positive_rate(sample_rate, "sample_rate", AudioError, name)


def _channel_axis(array: np.ndarray, name: str) -> int | None:
    """None for 1-D; else the axis of a 2-D array that holds the channels."""
    if array.ndim == 1:
        return None
    if array.ndim != 2:
        raise AudioError(
            f"{name}: wrong shape {array.shape}: expected 1-D (samples) or 2-D "
            "(samples, channels) / (channels, samples)"
        )
    axis = 1 if array.shape[1] <= array.shape[0] else 0
    if array.shape[axis] > MAX_CHANNELS:
        raise AudioError(
            f"{name}: wrong shape {array.shape}: neither side is a channel axis "
            f"(at most {MAX_CHANNELS} channels)"
        )
    return axis


def _array_to_mono(array: np.ndarray, name: str) -> np.ndarray:
    channel_axis = _channel_axis(array, name)
    if array.dtype in _INT_FULL_SCALE:
        wav = array.astype(np.float32)
        wav *= np.float32(1.0 / _INT_FULL_SCALE[array.dtype])
    elif array.dtype in _FLOAT_DTYPES:
        wav = array.astype(np.float32, copy=False)
    else:
        raise AudioError(
            f"{name}: unsupported sample dtype {array.dtype}: expected float "
            "in [-1, 1] or int8/int16/int32 PCM"
        )
    return wav if channel_axis is None else mix_to_mono(wav, channel_axis)


def _check_samples(wav: np.ndarray, name: str) -> None:
    if len(wav) == 0:
        raise AudioError(f"{name}: has zero samples")
    if not np.isfinite(wav).all():
        bad = int(np.count_nonzero(~np.isfinite(wav)))
        raise AudioError(f"{name}: contains NaN or Inf samples ({bad} of {len(wav)})")
    peak = max(float(wav.max()), -float(wav.min()))  # not np.abs: no copy of an hour-long recording
    if peak < SILENCE_PEAK:
        raise AudioError(f"{name}: is silent (its loudest sample is {peak:.1e} of full scale, below the "
                         f"{20 * math.log10(SILENCE_PEAK):.0f} dBFS that speech reaches)")


# load_audio's `normalize_db` parameter shadows the function of that name inside it.
_normalize_db = normalize_db
