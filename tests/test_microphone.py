"""Recording through soundcard from a real PulseAudio server: a private daemon whose default
microphone hears what is played into a null sink. Real dev speech is played while recording,
then the app registers and recognises a speaker from that microphone in subprocesses. Without a
server the app must say so in one line and exit non-zero."""
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mvector.apps import microphone
from mvector.audio import load_audio
from mvector.apps.microphone import MicrophoneError
from mvector.apps.recognition import EXIT_ERROR, EXIT_OK
from predict_helpers import dev_by_speaker, make_model_dir

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
PLAY_DELAY = 0.3
# A fresh null sink buffers ~2 s until a low-latency reader is attached; recordings made before
# its latency drops miss the speech.
MAX_SINK_LATENCY_US = 100_000
PULSE_TOOLS = ("pulseaudio", "pactl", "paplay", "parecord")


def sink_latency_us(env) -> int:
    listing = subprocess.run(["pactl", "list", "sinks"], env=env, capture_output=True, text=True).stdout
    found = re.findall(r"Latency: (\d+) usec", listing)
    return int(found[0]) if found else sys.maxsize


@pytest.fixture(scope="module")
def pulse_env(tmp_path_factory):
    """Environment of a private PulseAudio daemon: null sink ``vsink`` (16 kHz mono) as default
    output, ``vmic`` (its monitor) as default microphone. Torn down with its reader."""
    missing = [tool for tool in PULSE_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"PulseAudio tools not installed ({', '.join(missing)}): "
                    "apt-get install pulseaudio pulseaudio-utils")
    base = tmp_path_factory.mktemp("pulse")
    runtime, home = base / "run", base / "home"
    runtime.mkdir(mode=0o700)
    home.mkdir()
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), PULSE_RUNTIME_PATH=str(runtime / "pulse"),
               HOME=str(home), PULSE_SERVER=f"unix:{runtime / 'pulse' / 'native'}", PYTHONUNBUFFERED="1")
    started = subprocess.run(
        ["pulseaudio", "--daemonize=yes", "-n", "--exit-idle-time=-1", "--log-target=stderr",
         "-L", "module-native-protocol-unix",
         "-L", f"module-null-sink sink_name=vsink rate={RATE} channels=1",
         "-L", "module-remap-source source_name=vmic master=vsink.monitor"],
        env=env, capture_output=True, text=True, timeout=30)
    if started.returncode != 0:
        pytest.skip(f"cannot start a PulseAudio daemon here: {started.stderr.strip()[-300:]}")
    reader = None
    try:
        for args in (["set-default-sink", "vsink"], ["set-default-source", "vmic"]):
            subprocess.run(["pactl", *args], env=env, check=True, timeout=10)
        reader = subprocess.Popen(["parecord", "--raw", "--latency-msec=20", "-d", "vsink.monitor"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while sink_latency_us(env) >= MAX_SINK_LATENCY_US:
            assert time.monotonic() < deadline, "the null sink's latency never dropped below 100 ms"
            time.sleep(0.1)
        yield env
    finally:
        if reader is not None:
            reader.kill()
            reader.wait()
        subprocess.run(["pulseaudio", "-k"], env=env, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """Two dev utterances of different speakers as 16 kHz mono 16-bit WAV (what paplay plays)."""
    by_speaker = dev_by_speaker()
    folder = tmp_path_factory.mktemp("speech")
    wavs = []
    for speaker in sorted(by_speaker)[:2]:
        wav = folder / f"{speaker}.wav"
        sf.write(wav, load_audio(by_speaker[speaker][0], target_sample_rate=RATE), RATE, subtype="PCM_16")
        wavs.append(wav)
    return wavs


def play_later(wav: Path, env) -> subprocess.Popen:
    time.sleep(PLAY_DELAY)
    return subprocess.Popen(["paplay", str(wav)], env=env)


def find_lag(recording: np.ndarray, played: np.ndarray) -> int:
    """Where the played utterance starts in the recording: the cross-correlation peak."""
    size = len(recording) + len(played)
    correlation = np.fft.irfft(np.fft.rfft(recording, size) * np.conj(np.fft.rfft(played, size)), size)
    return int(np.argmax(correlation[:len(recording)]))


def best_alignment(recording: np.ndarray, played: np.ndarray) -> float:
    """Cosine similarity of the played utterance and the part of the recording aligned with it."""
    lag = find_lag(recording, played)
    heard = recording[lag:lag + len(played)]
    reference = played[:len(heard)]
    return float(heard @ reference / (np.linalg.norm(heard) * np.linalg.norm(reference) + 1e-12))


RECORD_SCRIPT = textwrap.dedent("""
    import subprocess, sys, threading, time
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from mvector.apps import microphone
    def play():
        time.sleep(float(sys.argv[4]))
        subprocess.run(["paplay", sys.argv[2]], check=True)
    player = threading.Thread(target=play)
    recording = microphone.record(float(sys.argv[5]), on_start=player.start)
    player.join()
    np.save(sys.argv[3], recording)
""")


@pytest.mark.slow
@pytest.mark.data
def test_recording_from_the_default_microphone_hears_the_played_speech(pulse_env, speech, tmp_path):
    script, out = tmp_path / "record.py", tmp_path / "recording.npy"
    script.write_text(RECORD_SCRIPT)
    played, _ = sf.read(speech[0], dtype="float32")
    seconds = len(played) / RATE + 1.0
    subprocess.run([sys.executable, str(script), str(ROOT), str(speech[0]), str(out), str(PLAY_DELAY),
                    str(seconds)], env=pulse_env, check=True, timeout=120)
    recording = np.load(out)
    assert recording.dtype == np.float32 and recording.ndim == 1
    assert len(recording) == round(seconds * RATE)

    lag = find_lag(recording, played)
    assert 0 < lag < 1.0 * RATE
    heard = recording[lag:lag + len(played)]
    reference = played[:len(heard)]
    assert len(heard) > 0.8 * len(played)
    assert best_alignment(recording, played) > 0.9
    rms = lambda x: float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))  # noqa: E731
    assert rms(heard) == pytest.approx(rms(reference), rel=0.2)
    assert rms(recording[:max(1, lag - 800)]) < 0.01 * rms(reference)  # silence before it plays


def run_app(env, *argv, play=None, timeout=300):
    """Run infer_recognition.py; with ``play``, start playing that file just after the app
    announces its recording."""
    app = subprocess.Popen([sys.executable, str(ROOT / "infer_recognition.py"), *map(str, argv)], env=env,
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, player = [], None
    for line in app.stdout:
        lines.append(line)
        if play is not None and line.startswith("Recording"):
            player = play_later(play, env)
    err = app.stderr.read()
    code = app.wait(timeout=timeout)
    if player is not None:
        player.wait(timeout=30)
    return code, "".join(lines), err


@pytest.mark.slow
@pytest.mark.data
def test_app_registers_and_recognises_from_the_microphone(pulse_env, speech, tmp_path):
    model = make_model_dir(tmp_path / "model")
    common = ["--model_dir", model, "--audio_db_path", tmp_path / "db", "--seconds", "3.5"]
    code, out, err = run_app(pulse_env, "--register", "夜雨飘零", *common, play=speech[0])
    assert code == EXIT_OK, err
    assert "Registered: 夜雨飘零" in out
    enrolled = list((tmp_path / "db").glob("*/*.flac"))
    assert len(enrolled) == 1  # the microphone recording, kept in the library
    stored, _ = sf.read(enrolled[0], dtype="float32")
    played, _ = sf.read(speech[0], dtype="float32")
    assert best_alignment(stored, played) > 0.9
    from mvector.inference.predictor import MVectorPredictor
    with MVectorPredictor(model_dir=model, audio_db_path=tmp_path / "db") as predictor:
        predictor.register(speech[1], "other")  # a second speaker, so recognition has a choice
        assert predictor.get_users() == ["other", "夜雨飘零"]

    code, out, err = run_app(pulse_env, "--recognize", *common, play=speech[0])
    assert code == EXIT_OK, err
    score = float(re.search(r"Recognised: 夜雨飘零 \(score ([0-9.]+)\)", out).group(1))
    assert score > 0.9


@pytest.mark.parametrize("argv", [["--recognize"], ["--register", "someone"], []])
def test_no_audio_server_is_one_clear_message(tmp_path, argv):
    env = dict(os.environ, PULSE_SERVER=f"unix:{tmp_path / 'no-such-socket'}")
    started = time.monotonic()
    code, out, err = run_app(env, *argv, "--model_dir", tmp_path / "never-loaded",
                             "--audio_db_path", tmp_path / "db", timeout=60)
    assert code == EXIT_ERROR
    assert err.startswith("error: cannot record: ") and err.count("\n") == 1, err
    assert "PulseAudio" in err and "Traceback" not in err
    assert time.monotonic() - started < 30  # refused before any model is loaded


def test_record_without_server_raises_microphone_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PULSE_SERVER", f"unix:{tmp_path / 'no-such-socket'}")
    with pytest.raises(MicrophoneError, match="cannot record"):
        microphone.record(1.0)


def test_soundcard_import_failure_becomes_microphone_error(monkeypatch):
    monkeypatch.setattr(microphone, "check_audio_server", lambda: None)
    monkeypatch.setitem(sys.modules, "soundcard", None)  # import soundcard now raises ImportError
    with pytest.raises(MicrophoneError, match="soundcard failed to start"):
        microphone.default_microphone()


@pytest.mark.parametrize("seconds", [0, -1, float("nan"), "3", True])
def test_bad_recording_length(seconds):
    with pytest.raises(MicrophoneError, match="positive number of seconds"):
        microphone.record(seconds)


class FakeMicrophone:
    """Stands in for soundcard's microphone: records a ramp in two channels, or fails."""

    name = "fake"

    def __init__(self, fail=False):
        self.fail, self.opened, self.closed, self.requests = fail, 0, 0, []

    def recorder(self, samplerate, channels):
        microphone = self

        class Recorder:
            def __enter__(self):
                microphone.opened += 1
                return self

            def __exit__(self, *exc):
                microphone.closed += 1

            def record(self, numframes):
                if microphone.fail:
                    raise RuntimeError("device unplugged")
                microphone.requests.append(numframes)
                ramp = np.arange(numframes, dtype=np.float64)
                return np.stack([ramp, -ramp], axis=1)

        return Recorder()


def test_record_opens_records_once_and_closes(monkeypatch):
    fake, started = FakeMicrophone(), []
    monkeypatch.setattr(microphone, "default_microphone", lambda: fake)
    audio = microphone.record(0.25, 16000, on_start=lambda: started.append(fake.opened))
    assert audio.dtype == np.float32 and audio.shape == (4000,) and audio.flags.c_contiguous
    np.testing.assert_array_equal(audio, np.arange(4000, dtype=np.float32))  # first channel
    assert started == [1] and fake.requests == [4000] and fake.closed == 1


def test_record_chunks_keeps_one_recorder_open_until_closed(monkeypatch):
    fake = FakeMicrophone()
    monkeypatch.setattr(microphone, "default_microphone", lambda: fake)
    chunks = microphone.record_chunks(0.1, 8000)
    assert [len(next(chunks)) for _ in range(3)] == [800, 800, 800]
    assert fake.opened == 1 and fake.closed == 0
    chunks.close()
    assert fake.closed == 1


@pytest.mark.parametrize("start", [lambda: microphone.record(1.0), lambda: next(microphone.record_chunks(1.0))])
def test_a_failing_recorder_is_a_microphone_error_naming_it(monkeypatch, start):
    fake = FakeMicrophone(fail=True)
    monkeypatch.setattr(microphone, "default_microphone", lambda: fake)
    with pytest.raises(MicrophoneError, match=r"recording from 'fake' failed \(RuntimeError: device unplugged\)"):
        start()
    assert fake.closed == 1
