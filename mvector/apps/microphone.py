"""Recording from the default microphone through ``soundcard``, with every failure (no audio
server, no libpulse, no microphone) turned into one MicrophoneError that says what is missing.

soundcard is imported lazily: importing it connects to the audio server at once, raising a bare
AssertionError when no PulseAudio server runs and OSError when libpulse is not installed."""

import shutil
import subprocess
import sys

import numpy as np

from mvector.errors import MVectorError

SAMPLE_RATE = 16000
SERVER_CHECK_TIMEOUT = 10


class MicrophoneError(MVectorError):
    """No way to record: no audio server, no microphone, or the recording itself failed."""


def check_audio_server() -> None:
    """On Linux soundcard talks to PulseAudio (or PipeWire's PulseAudio server): make sure one
    answers before soundcard turns its absence into a bare assertion."""
    if not sys.platform.startswith("linux"):
        return
    if shutil.which("pactl") is None:
        raise MicrophoneError("cannot record: 'pactl' is not installed, so no PulseAudio server can be "
                              "checked or used (install pulseaudio-utils and a PulseAudio or PipeWire "
                              "server), or pass an audio file instead of the microphone")
    try:
        result = subprocess.run(["pactl", "info"], capture_output=True, text=True,
                                timeout=SERVER_CHECK_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise MicrophoneError(f"cannot record: the PulseAudio server did not answer 'pactl info' within "
                              f"{SERVER_CHECK_TIMEOUT} s") from None
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()
        raise MicrophoneError("cannot record: no PulseAudio server is running or reachable "
                              f"('pactl info' says: {reason[-1] if reason else 'exit code ' + str(result.returncode)}); "
                              "start one, or pass an audio file instead of the microphone")


def _soundcard():
    check_audio_server()
    try:
        import soundcard
    except Exception as exc:  # OSError without libpulse, AssertionError without a server, ...
        raise MicrophoneError(f"cannot record: soundcard failed to start ({type(exc).__name__}: {exc})") from None
    return soundcard


def default_microphone():
    """soundcard's default microphone, or MicrophoneError when there is none."""
    soundcard = _soundcard()
    try:
        microphone = soundcard.default_microphone()
    except Exception as exc:
        raise MicrophoneError(f"cannot record: no default microphone ({type(exc).__name__}: {exc})") from None
    if microphone is None:
        raise MicrophoneError("cannot record: the audio server reports no microphone")
    return microphone


def _mono(data) -> np.ndarray:
    data = np.asarray(data, dtype=np.float32)
    return np.ascontiguousarray(data[:, 0] if data.ndim == 2 else data)


def _frames(seconds: float, sample_rate: int) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise MicrophoneError(f"recording length must be a positive number of seconds, got {seconds!r}")
    return max(1, round(seconds * sample_rate))


def record(seconds: float, sample_rate: int = SAMPLE_RATE, on_start=None) -> np.ndarray:
    """Record ``seconds`` from the default microphone: float32 mono samples at ``sample_rate``.

    ``on_start()`` is called once the stream is open, so a "speak now" prompt is not shown
    while connecting to the server still takes time (and the start of the speech is lost)."""
    chunks = record_chunks(seconds, sample_rate, on_start)
    try:
        return next(chunks)
    finally:
        chunks.close()  # closes the recorder now, not whenever the generator is collected


def record_chunks(seconds: float, sample_rate: int = SAMPLE_RATE, on_start=None):
    """Record without gaps, yielding consecutive ``seconds``-long float32 mono chunks until the
    generator is closed; one open recorder, so no audio falls between chunks. ``on_start`` as
    for ``record``."""
    numframes = _frames(seconds, sample_rate)
    microphone = default_microphone()
    try:
        with microphone.recorder(samplerate=sample_rate, channels=1) as recorder:
            if on_start is not None:
                on_start()
            while True:
                yield _mono(recorder.record(numframes=numframes))
    except Exception as exc:
        raise MicrophoneError(f"recording from {microphone.name!r} failed ({type(exc).__name__}: {exc})") from None
