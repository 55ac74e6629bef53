"""Audio front-end: turn a file, bytes, a file object, an array or a tensor into float32 mono
samples at the model's rate, or raise AudioError naming the input and what is wrong with it."""

import errno
import io
import math
import os
import re
import stat
import sys

import numpy as np
import soundfile as sf
import soxr

from mvector.errors import AudioError, ConfigError

# The file endings taken for audio wherever a folder is scanned (corpora, noise banks, calibration sets).
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma")

__all__ = [
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
# The longest recording decoded by default (a one-hour meeting must still load): decoding stops past it,
# counted in decoded samples at the file's own rate, so a small file that expands to days of audio
# (a decompression bomb: packets of silence, a header claiming 1 Hz) never fills memory.
DEFAULT_MAX_DURATION = 4 * 3600.0
# A header declaring more frames than this (a day at 192 kHz) is not believed, whatever the limit.
_MAX_HEADER_FRAMES = 24 * 3600 * 192_000
# A file that yields fewer frames than its header declares is truncated. Compressed formats
# without an exact length (MP3 without a Xing frame) only estimate it, hence some slack.
TRUNCATION_TOLERANCE = 0.01

# For a cut-off WAV libsndfile silently shrinks its frame count to what is there; only its
# log tells, as "data : <declared> (should be <present>)". Writers that stream to a pipe put
# a placeholder size of 2**31 or more (usually 0xFFFFFFFF): that is not truncation.
_WAV_DATA_SIZE_MISMATCH = re.compile(
    r"^data\s*:\s*(?P<declared>\d+)\s*\(should be (?P<present>\d+)\)", re.MULTILINE
)
_STREAMING_WAV_SIZE = 2**31

# Full-scale of integer PCM: int arrays are divided by it to land in [-1, 1).
_INT_FULL_SCALE = {np.dtype(np.int8): 2.0**7, np.dtype(np.int16): 2.0**15, np.dtype(np.int32): 2.0**31}
_FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_SOURCE_KINDS = (
    "a path (str or os.PathLike), the bytes of a whole file, a binary file object, "
    "or a numpy array / torch tensor with sample_rate"
)


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
        target_sample_rate = _positive_rate(target_sample_rate, "target_sample_rate", ConfigError)
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
            raise _too_long(name, max_duration)
    else:
        wav, rate = _decode_file(_file_handle(source, name), name, max_duration)

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
    handle = _file_handle(source, name)
    start = _tell(handle)
    try:
        with sf.SoundFile(handle) as sound:
            if sound.frames <= _MAX_HEADER_FRAMES:
                return sound.frames / sound.samplerate
            sf_error = RuntimeError(f"header declares {sound.frames} frames")  # no length: count below
    except (sf.SoundFileError, RuntimeError) as error:
        sf_error = error
    _rewind(handle, start)
    return _av_duration(handle, start, name, sf_error, max_duration)


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample 1-D ``wav`` with soxr's high-quality preset: the same call librosa.resample
    (res_type='soxr_hq') makes, without importing librosa. The length is fixed to
    ceil(len * target_sr / orig_sr), as librosa does, so lengths are predictable."""
    orig_sr = _positive_rate(orig_sr, "orig_sr", ConfigError)
    target_sr = _positive_rate(target_sr, "target_sr", ConfigError)
    if orig_sr == target_sr:
        return wav
    out = soxr.resample(np.asarray(wav, dtype=np.float32), orig_sr, target_sr, quality="HQ")
    expected = -(-len(wav) * target_sr // orig_sr)
    if len(out) >= expected:
        return out[:expected]
    return np.pad(out, (0, expected - len(out)))


def normalize_db(wav: np.ndarray, target_db: float) -> np.ndarray:
    """Scale ``wav`` so its RMS level is ``target_db`` dBFS (e.g. -20). A pure gain: peaks
    may exceed 1.0, which float features handle; clipping would distort the voice."""
    if not isinstance(target_db, (int, float)) or not math.isfinite(target_db):
        raise ConfigError(f"normalize_db must be a finite level in dBFS, got {target_db!r}")
    rms = math.sqrt(float(np.mean(np.square(wav, dtype=np.float64)))) if len(wav) else 0.0
    if rms == 0.0:
        raise AudioError(f"cannot normalise audio with no energy to {target_db:g} dBFS")
    gain = 10.0 ** (target_db / 20.0) / rms
    return np.multiply(wav, np.float32(gain), dtype=np.float32)


def vad_trim(
    wav: np.ndarray,
    sample_rate: int,
    *,
    threshold_db: float = -40.0,
    frame_duration: float = 0.02,
    margin: float = 0.1,
) -> np.ndarray:
    """Cut leading and trailing non-speech: frames whose mean energy is more than
    ``-threshold_db`` dB below the loudest frame's. Relative to the utterance's own maximum,
    so it needs no calibration to the recording level; ``margin`` seconds are kept on each
    side so soft onsets and endings survive. Returns a view into ``wav``."""
    sample_rate = _positive_rate(sample_rate, "sample_rate", ConfigError)
    frame = max(1, round(frame_duration * sample_rate))
    if len(wav) <= frame:
        return wav
    starts = np.arange(0, len(wav), frame)
    lengths = np.diff(np.append(starts, len(wav)))
    energy = np.add.reduceat(np.square(wav, dtype=np.float64), starts) / lengths
    active = np.flatnonzero(energy >= energy.max() * 10.0 ** (threshold_db / 10.0))
    keep = round(margin * sample_rate)
    begin = max(0, int(starts[active[0]]) - keep)
    end = min(len(wav), int(starts[active[-1]] + lengths[active[-1]]) + keep)
    return wav[begin:end]


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


def _positive_rate(value, what: str, error: type, name: str | None = None) -> int:
    prefix = f"{name}: " if name else ""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise error(f"{prefix}{what} must be a positive integer in Hz, got {value!r}")
    if not (math.isfinite(value) and value > 0 and value == int(value)):
        raise error(f"{prefix}{what} must be a positive integer in Hz, got {value!r}")
    return int(value)


def _array_rate(sample_rate, name: str) -> int:
    """Samples carry no rate of their own: the caller must say it."""
    if sample_rate is None:
        raise AudioError(f"{name}: sample_rate is required for array and tensor input")
    return _positive_rate(sample_rate, "sample_rate", AudioError, name)


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
    return wav if channel_axis is None else _mix_to_mono(wav, channel_axis)


def _mix_to_mono(wav: np.ndarray, channel_axis: int) -> np.ndarray:
    if wav.shape[channel_axis] == 1:
        return wav[:, 0] if channel_axis == 1 else wav[0]
    return wav.mean(axis=channel_axis, dtype=np.float32)


def _check_samples(wav: np.ndarray, name: str) -> None:
    if len(wav) == 0:
        raise AudioError(f"{name}: has zero samples")
    if not np.isfinite(wav).all():
        bad = int(np.count_nonzero(~np.isfinite(wav)))
        raise AudioError(f"{name}: contains NaN or Inf samples ({bad} of {len(wav)})")
    peak = float(np.max(np.abs(wav)))
    if peak < SILENCE_PEAK:
        raise AudioError(f"{name}: is silent (its loudest sample is {peak:.1e} of full scale, below the "
                         f"{20 * math.log10(SILENCE_PEAK):.0f} dBFS that speech reaches)")


def _file_handle(source, name: str):
    """A path string or a seekable binary file object, which soundfile and av both open."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fsdecode(source)
        try:
            info = os.stat(path)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise AudioError(f"{name}: is a symbolic link loop, not an audio file") from None
            if error.errno in (errno.ENOENT, errno.ENOTDIR):
                raise AudioError(f"{name}: file not found") from None
            raise AudioError(f"{name}: cannot be read ({error.strerror})") from None
        if stat.S_ISDIR(info.st_mode):
            raise AudioError(f"{name}: is a directory, not an audio file")
        if not stat.S_ISREG(info.st_mode):  # a FIFO, socket or device would block a decoder forever
            raise AudioError(f"{name}: is not a regular file (a FIFO, socket or device); give a file path")
        if info.st_size == 0:
            raise AudioError(f"{name}: is empty (0 bytes)")
        return path
    if isinstance(source, (bytes, bytearray, memoryview)):
        if memoryview(source).nbytes == 0:
            raise AudioError(f"{name}: is empty (0 bytes)")
        return io.BytesIO(source)
    if hasattr(source, "read"):
        if isinstance(source, io.TextIOBase):
            raise AudioError(f"{name}: is a text-mode file; open it in binary mode ('rb')")
        if _is_seekable(source):
            return source
        # Decoders seek (and the av fallback rewinds), so a pipe or socket is buffered.
        data = source.read()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise AudioError(f"{name}: read() returned {type(data).__name__}, not bytes")
        if memoryview(data).nbytes == 0:
            raise AudioError(f"{name}: is empty (0 bytes)")
        return io.BytesIO(data)
    raise AudioError(f"{name}: unsupported audio source type {type(source).__name__}; expected {_SOURCE_KINDS}")


def _is_seekable(file) -> bool:
    try:
        return bool(file.seekable()) and hasattr(file, "tell")
    except (AttributeError, OSError, ValueError):
        return False


def _tell(handle) -> int | None:
    return None if isinstance(handle, str) else handle.tell()


def _rewind(handle, start: int | None) -> None:
    if start is not None:
        handle.seek(start)


def _too_long(name: str, max_duration: float) -> AudioError:
    return AudioError(f"{name}: longer than the {max_duration:g} s this accepts (max_duration); "
                      f"cut it into shorter recordings")


def _decode_file(handle, name: str, max_duration: float | None = None) -> tuple[np.ndarray, int]:
    """soundfile where libsndfile knows the format (fast, exact lengths); av otherwise."""
    start = _tell(handle)
    try:
        sound = sf.SoundFile(handle)
    except (sf.SoundFileError, RuntimeError) as sf_error:
        _rewind(handle, start)
        return _decode_with_av(handle, name, sf_error, max_duration)[:2]
    with sound:
        if sound.frames <= _MAX_HEADER_FRAMES:
            if max_duration is not None and sound.frames > max_duration * sound.samplerate:
                raise _too_long(name, max_duration)  # before a byte of it is decoded
            return _read_whole(sound, name)
    # A header that cannot be trusted (a FLAC written to a pipe declares no length, which libsndfile
    # reports as 2**63 - 1 frames and cannot seek past): FFmpeg decodes it, stopping at the limit.
    _rewind(handle, start)
    untrusted = RuntimeError(f"header declares {sound.frames} frames")
    return _decode_with_av(handle, name, untrusted, max_duration)[:2]


def _read_whole(sound, name: str) -> tuple[np.ndarray, int]:
    """All of a file whose header is believed, checked against what the header declares."""
    try:
        wav = sound.read(dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, MemoryError, ValueError) as error:
        raise AudioError(f"{name}: corrupt or truncated {sound.format} file ({error})") from error
    # libsndfile returns what it could read of a cut-off file without complaint.
    if len(wav) < sound.frames * (1.0 - TRUNCATION_TOLERANCE):
        raise AudioError(
            f"{name}: truncated {sound.format} file: header declares {sound.frames} "
            f"frames, only {len(wav)} could be read"
        )
    cut_wav = _WAV_DATA_SIZE_MISMATCH.search(sound.extra_info)
    if cut_wav and int(cut_wav["present"]) < int(cut_wav["declared"]) < _STREAMING_WAV_SIZE:
        raise AudioError(
            f"{name}: truncated {sound.format} file: header declares {cut_wav['declared']} "
            f"data bytes, only {cut_wav['present']} present"
        )
    return _mix_to_mono(wav, channel_axis=1), sound.samplerate


def _pyav(name: str, sf_error: Exception):
    """PyAV, imported on first use: only formats libsndfile cannot read need it, and a machine that
    reads WAV, FLAC, Ogg or Opus alone (a GPU training image) can run without it."""
    try:
        import av
    except ImportError:
        raise AudioError(f"{name}: not a format soundfile reads ({sf_error}), and PyAV, which reads the "
                         f"others through FFmpeg, is not installed (pip install av)") from None
    return av


def _decode_with_av(handle, name: str, sf_error: Exception, max_duration: float | None = None,
                    count_only: bool = False) -> tuple[np.ndarray, int, float]:
    """``(samples, sample rate, seconds decoded)`` with FFmpeg, stopping once past ``max_duration``
    seconds: an AudioError, or with ``count_only`` (no samples kept) the end of the count."""
    av = _pyav(name, sf_error)
    chunks, seconds, sample_rate = [], 0.0, None
    try:
        with av.open(handle, mode="r") as container:
            stream = _audio_stream(container, name)
            sample_rate = stream.rate
            # Decoders emit int16/int32/float, packed or planar; fltp gives (channels, samples).
            to_float = av.AudioResampler(format="fltp")
            for frame in container.decode(stream):
                sample_rate = frame.sample_rate
                seconds += frame.samples / frame.sample_rate
                if max_duration is not None and seconds > max_duration:
                    if count_only:
                        break
                    raise _too_long(name, max_duration)
                if count_only:
                    continue
                for planar in to_float.resample(frame):
                    chunks.append(_mix_to_mono(planar.to_ndarray(), channel_axis=0))
            if not count_only:
                for planar in to_float.resample(None):
                    chunks.append(_mix_to_mono(planar.to_ndarray(), channel_axis=0))
    except av.FFmpegError as error:
        raise AudioError(_unreadable(name, sf_error, error)) from error
    wav = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return wav, sample_rate, seconds


def _av_duration(handle, start: int | None, name: str, sf_error: Exception,
                 max_duration: float | None = DEFAULT_MAX_DURATION) -> float:
    av = _pyav(name, sf_error)
    try:
        with av.open(handle, mode="r") as container:
            stream = _audio_stream(container, name)
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / av.time_base
    except av.FFmpegError as error:
        raise AudioError(_unreadable(name, sf_error, error)) from error
    # Some streams (raw ADTS AAC, WebM without a duration, ...) carry no length: count the samples.
    _rewind(handle, start)
    return _decode_with_av(handle, name, sf_error, max_duration, count_only=True)[2]


def _audio_stream(container, name: str):
    if not container.streams.audio:
        raise AudioError(f"{name}: has no audio stream")
    stream = container.streams.audio[0]
    # FFmpeg gives a stream whose codec it does not know (an unknown WAV format tag, 0 bits per
    # sample) no decoder, and PyAV no rate.
    if getattr(stream, "codec_context", None) is None or not getattr(stream, "rate", None):
        codec = getattr(getattr(stream, "codec_context", None), "name", None) or "unknown"
        raise AudioError(f"{name}: its audio is in a codec this FFmpeg cannot decode ({codec})")
    return stream


def _unreadable(name: str, sf_error: Exception, av_error: Exception) -> str:
    return f"{name}: not a readable audio file (soundfile: {sf_error}; FFmpeg: {av_error})"


# load_audio's `normalize_db` parameter shadows the function of that name inside it.
_normalize_db = normalize_db
