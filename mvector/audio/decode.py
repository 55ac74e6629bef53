"""Decoding audio files, bytes and file objects: soundfile first, FFmpeg (PyAV) for what it cannot open,
with limits that stop a decompression bomb before it fills memory."""
import errno
import io
import os
import re
import stat

import numpy as np
import soundfile as sf

from mvector.audio.signal import mix_to_mono
from mvector.errors import AudioError


# The longest recording decoded by default (a one-hour meeting must still load): decoding stops past it,
# counted in decoded samples at the file's own rate, so a small file that expands to days of audio
# (a decompression bomb: packets of silence, a header claiming 1 Hz) never fills memory.
DEFAULT_MAX_DURATION = 4 * 3600.0
# A header declaring more frames than this (a day at 192 kHz) is not believed, whatever the limit.
MAX_HEADER_FRAMES = 24 * 3600 * 192_000
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
_SOURCE_KINDS = (
    "a path (str or os.PathLike), the bytes of a whole file, a binary file object, "
    "or a numpy array / torch tensor with sample_rate"
)


def file_handle(source, name: str):
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


def tell(handle) -> int | None:
    return None if isinstance(handle, str) else handle.tell()


def rewind(handle, start: int | None) -> None:
    if start is not None:
        handle.seek(start)


def too_long(name: str, max_duration: float) -> AudioError:
    return AudioError(f"{name}: longer than the {max_duration:g} s this accepts (max_duration); "
                      f"cut it into shorter recordings")


def decode_file(handle, name: str, max_duration: float | None = None) -> tuple[np.ndarray, int]:
    """soundfile where libsndfile knows the format (fast, exact lengths); av otherwise."""
    start = tell(handle)
    try:
        sound = sf.SoundFile(handle)
    except (sf.SoundFileError, RuntimeError) as sf_error:
        rewind(handle, start)
        return _decode_with_av(handle, name, sf_error, max_duration)[:2]
    with sound:
        if sound.frames <= MAX_HEADER_FRAMES:
            if max_duration is not None and sound.frames > max_duration * sound.samplerate:
                raise too_long(name, max_duration)  # before a byte of it is decoded
            return _read_whole(sound, name)
    # A header that cannot be trusted (a FLAC written to a pipe declares no length, which libsndfile
    # reports as 2**63 - 1 frames and cannot seek past): FFmpeg decodes it, stopping at the limit.
    rewind(handle, start)
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
    return mix_to_mono(wav, channel_axis=1), sound.samplerate


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
                    raise too_long(name, max_duration)
                if count_only:
                    continue
                for planar in to_float.resample(frame):
                    chunks.append(mix_to_mono(planar.to_ndarray(), channel_axis=0))
            if not count_only:
                for planar in to_float.resample(None):
                    chunks.append(mix_to_mono(planar.to_ndarray(), channel_axis=0))
    except av.FFmpegError as error:
        raise AudioError(_unreadable(name, sf_error, error)) from error
    wav = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return wav, sample_rate, seconds


def av_duration(handle, start: int | None, name: str, sf_error: Exception,
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
    rewind(handle, start)
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
