"""Tests for mvector.audio: every accepted input kind, the signal processing against direct
formulas, real Opus/FLAC data, and every kind of bad input raising AudioError that names it."""

import io
import math
import re
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

import mvector.audio as audio
from mvector.audio import (
    SILENCE_PEAK,
    AudioError,
    audio_duration,
    load_audio,
    normalize_db,
    resample,
    vad_trim,
)
from mvector.errors import AudioError as ErrorsAudioError
from predict_helpers import live_webm
from mvector.errors import ConfigError

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def sine(freq, sample_rate, seconds, amplitude=0.5):
    t = np.arange(int(round(sample_rate * seconds))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_freq(wav, sample_rate):
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return np.argmax(spectrum) * sample_rate / len(wav)


def rms_db(wav):
    return 20 * math.log10(math.sqrt(float(np.mean(np.square(wav, dtype=np.float64)))))


def write_wav(path, wav, sample_rate=16000, subtype="FLOAT"):
    sf.write(str(path), wav, sample_rate, subtype=subtype)
    return path


def encode_with_av(path, wav, sample_rate, container_format, codec):
    """Compress mono float samples with FFmpeg (mp3, m4a...), as a user's file would be."""
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=sample_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(wav[None, :], format="fltp", layout="mono")
        frame.sample_rate = sample_rate
        to_codec = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=sample_rate)
        for converted in to_codec.resample(frame) + to_codec.resample(None):
            container.mux(stream.encode(converted))
        container.mux(stream.encode(None))
    return path


def first_listed(subset, suffix):
    from mvector.lists import read_speaker_list

    return next(path for path, _ in read_speaker_list(DATA / subset / "list.tsv") if path.endswith(suffix))


def raises_naming(name, *fragments):
    """pytest.raises(AudioError) whose message names the input and each fragment of the problem."""
    pattern = ".*".join(re.escape(part) for part in (name, *fragments))
    return pytest.raises(AudioError, match=re.compile(pattern, re.DOTALL))


@pytest.fixture
def tone():
    return sine(440, 16000, 1.0)


@pytest.fixture
def wav_path(tmp_path, tone):
    return write_wav(tmp_path / "tone.wav", tone)


# --- accepted inputs -------------------------------------------------------------------------


def test_audio_error_is_reexported():
    assert audio.AudioError is ErrorsAudioError


def test_path_str_and_pathlib(wav_path, tone):
    for source in (str(wav_path), wav_path):
        wav = load_audio(source)
        assert wav.dtype == np.float32 and wav.ndim == 1
        np.testing.assert_array_equal(wav, tone)


def test_bytes_bytearray_memoryview(wav_path, tone):
    data = wav_path.read_bytes()
    for source in (data, bytearray(data), memoryview(data)):
        np.testing.assert_array_equal(load_audio(source), tone)


def test_file_objects(wav_path, tone):
    with open(wav_path, "rb") as file:
        np.testing.assert_array_equal(load_audio(file), tone)
        assert not file.closed  # the caller's file stays the caller's

    class Pipe:
        """Only read(): no seek, like a socket or a subprocess pipe."""

        def __init__(self, data):
            self._data = data

        def read(self, size=-1):
            data, self._data = self._data, b""
            return data

    np.testing.assert_array_equal(load_audio(Pipe(wav_path.read_bytes())), tone)


def test_file_object_read_from_current_position(wav_path, tone):
    prefix = b"not audio"
    buffer = io.BytesIO(prefix + wav_path.read_bytes())
    buffer.seek(len(prefix))
    np.testing.assert_array_equal(load_audio(buffer), tone)


def test_numpy_float_array(tone):
    wav = load_audio(tone, sample_rate=16000)
    np.testing.assert_array_equal(wav, tone)
    np.testing.assert_allclose(load_audio(tone.astype(np.float64), 16000), tone)


def test_torch_tensor(tone):
    tensor = torch.from_numpy(tone).requires_grad_(False)
    np.testing.assert_array_equal(load_audio(tensor, sample_rate=16000), tone)
    np.testing.assert_allclose(load_audio(tensor.to(torch.bfloat16), 16000), tone, atol=4e-3)


def test_int16_and_int32_arrays_are_scaled():
    pcm16 = np.array([0, 16384, -32768, 32767] * 100, dtype=np.int16)
    wav = load_audio(pcm16, sample_rate=16000)
    assert wav.dtype == np.float32
    np.testing.assert_allclose(wav[:4], [0.0, 0.5, -1.0, 32767 / 32768])
    pcm32 = pcm16.astype(np.int32) << 16
    np.testing.assert_allclose(load_audio(pcm32, sample_rate=16000), wav)


def test_stereo_mix_down_both_layouts(tmp_path):
    left, right = sine(440, 16000, 0.5), sine(660, 16000, 0.5, amplitude=0.25)
    expected = (left + right) / 2
    samples_channels = np.stack([left, right], axis=1)
    np.testing.assert_allclose(load_audio(samples_channels, 16000), expected, atol=1e-7)
    np.testing.assert_allclose(load_audio(samples_channels.T, 16000), expected, atol=1e-7)
    stereo_file = write_wav(tmp_path / "stereo.flac", samples_channels, subtype="PCM_24")
    np.testing.assert_allclose(load_audio(stereo_file), expected, atol=1e-6)


def test_target_sample_rate_none_keeps_native_rate(tmp_path):
    tone_8k = sine(440, 8000, 0.5)
    path = write_wav(tmp_path / "tone8k.wav", tone_8k, 8000)
    np.testing.assert_array_equal(load_audio(path, target_sample_rate=None), tone_8k)


@pytest.mark.parametrize("orig_sr", [8000, 44100])
def test_resampling_keeps_length_and_frequency(orig_sr, tmp_path):
    freq, seconds = 1000, 1.5
    source = sine(freq, orig_sr, seconds)
    expected_len = math.ceil(len(source) * 16000 / orig_sr)
    direct = resample(source, orig_sr, 16000)
    assert direct.dtype == np.float32 and len(direct) == expected_len
    assert dominant_freq(direct, 16000) == pytest.approx(freq, abs=16000 / len(direct))
    # Away from the edges a band-limited resampler reproduces the sine itself.
    t = np.arange(len(direct)) / 16000
    middle = slice(1600, -1600)
    np.testing.assert_allclose(direct[middle], 0.5 * np.sin(2 * np.pi * freq * t)[middle], atol=2e-3)
    from_file = load_audio(write_wav(tmp_path / f"tone{orig_sr}.wav", source, orig_sr))
    np.testing.assert_allclose(from_file, direct, atol=1e-6)


def test_resample_same_rate_is_identity(tone):
    assert resample(tone, 16000, 16000) is tone


@pytest.mark.parametrize("length, orig_sr", [(1001, 44100), (7, 8000), (22051, 22050)])
def test_resample_length_is_ceil_like_librosa(length, orig_sr):
    wav = sine(100, orig_sr, length / orig_sr)
    assert len(resample(wav, orig_sr, 16000)) == math.ceil(length * 16000 / orig_sr)


@pytest.mark.data
def test_real_opus_from_train():
    path = first_listed("train", ".opus")
    wav = load_audio(path)
    info = sf.info(str(path))
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert len(wav) == math.ceil(info.frames * 16000 / info.samplerate)
    assert np.isfinite(wav).all() and np.abs(wav).max() > 0.01
    assert audio_duration(path) == pytest.approx(info.duration)


@pytest.mark.data
def test_real_opus_through_av_fallback(monkeypatch):
    """The FFmpeg path must decode what an older libsndfile (no Opus) cannot open."""
    path = first_listed("train", ".opus")
    by_soundfile = load_audio(path)

    def no_opus(*args, **kwargs):
        raise sf.LibsndfileError(1, "Error opening: format not recognised")

    monkeypatch.setattr(audio.sf, "SoundFile", no_opus)
    by_av = load_audio(path)  # av decodes Opus at 48 kHz: resampled back to 16 kHz
    assert abs(len(by_av) - len(by_soundfile)) <= 0.01 * len(by_soundfile)
    n = min(len(by_av), len(by_soundfile))
    correlation = np.corrcoef(by_av[:n], by_soundfile[:n])[0, 1]
    assert correlation > 0.9
    assert audio_duration(path) == pytest.approx(len(by_soundfile) / 16000, abs=0.05)


@pytest.mark.data
def test_real_flac_from_dev():
    path = first_listed("dev", ".flac")
    reference, sample_rate = sf.read(str(path), dtype="float32")
    wav = load_audio(path, target_sample_rate=sample_rate)
    np.testing.assert_array_equal(wav, reference if reference.ndim == 1 else reference.mean(axis=1))
    assert audio_duration(path) == pytest.approx(len(reference) / sample_rate)


@pytest.mark.parametrize(
    "filename, container_format, codec",
    [("tone.mp3", "mp3", "libmp3lame"), ("tone.m4a", "ipod", "aac")],
)
def test_compressed_formats_written_with_av(tmp_path, filename, container_format, codec):
    if codec not in av.codecs_available:
        pytest.skip(f"this FFmpeg build has no {codec} encoder")
    seconds = 1.5
    path = encode_with_av(tmp_path / filename, sine(440, 22050, seconds), 22050, container_format, codec)
    wav = load_audio(path)
    # Encoder priming/padding adds a few milliseconds; the tone itself must survive.
    assert abs(len(wav) / 16000 - seconds) < 0.15
    assert dominant_freq(wav, 16000) == pytest.approx(440, abs=2)
    assert rms_db(wav) == pytest.approx(rms_db(sine(440, 16000, 1.0)), abs=1.0)
    assert audio_duration(path) == pytest.approx(seconds, abs=0.15)
    np.testing.assert_allclose(load_audio(path.read_bytes()), wav)


def test_without_pyav_the_formats_libsndfile_reads_still_load(tmp_path, monkeypatch, tone):
    """A GPU training image may lack PyAV (a 35 MB wheel): what libsndfile reads (WAV, FLAC, Ogg,
    Opus, MP3) must not need it, and a format that does (AAC in .m4a) names it."""
    if "aac" not in av.codecs_available:
        pytest.skip("this FFmpeg build has no aac encoder")
    m4a = encode_with_av(tmp_path / "tone.m4a", tone, 16000, "ipod", "aac")
    flac = tmp_path / "tone.flac"
    sf.write(str(flac), tone, 16000)
    monkeypatch.setitem(sys.modules, "av", None)  # what `import av` meets where it is not installed
    np.testing.assert_allclose(load_audio(flac), tone, atol=1e-4)
    assert audio_duration(flac) == pytest.approx(1.0)
    with raises_naming(str(m4a), "not a format soundfile reads", "PyAV", "not installed", "pip install av"):
        load_audio(m4a)
    with raises_naming(str(m4a), "PyAV", "not installed"):
        audio_duration(m4a)


def test_normalize_db_reaches_target(tone):
    quiet = 0.01 * tone
    for target in (-20.0, -30.0, -3.0):
        assert rms_db(normalize_db(quiet, target)) == pytest.approx(target, abs=1e-3)
    wav = load_audio(quiet, 16000, normalize_db=-20)
    assert rms_db(wav) == pytest.approx(-20, abs=1e-3)
    assert wav.dtype == np.float32
    np.testing.assert_allclose(wav / wav.max(), quiet / quiet.max(), atol=1e-6)


def test_normalize_db_rejects_bad_target_and_silence(tone):
    with pytest.raises(ConfigError, match="normalize_db"):
        normalize_db(tone, float("nan"))
    with pytest.raises(AudioError, match="no energy"):
        normalize_db(np.zeros(100, np.float32), -20)


def vad_signal(rng, sample_rate=16000):
    """0.6 s of faint noise, 1.0 s of a loud tone, 0.8 s of faint noise."""
    lead, speech, tail = int(0.6 * sample_rate), int(1.0 * sample_rate), int(0.8 * sample_rate)
    wav = (1e-3 * rng.standard_normal(lead + speech + tail)).astype(np.float32)
    wav[lead : lead + speech] += sine(300, sample_rate, 1.0)
    return wav, lead, lead + speech


def test_vad_trims_leading_and_trailing_silence():
    sample_rate, margin = 16000, 0.1
    wav, speech_start, speech_end = vad_signal(np.random.default_rng(0), sample_rate)
    trimmed = vad_trim(wav, sample_rate, margin=margin)
    keep, frame = int(margin * sample_rate), int(0.02 * sample_rate)
    # vad_trim returns a view: where it starts in wav is where the cut was made.
    assert np.shares_memory(trimmed, wav)
    begin = (trimmed.ctypes.data - wav.ctypes.data) // wav.itemsize
    # The cut lands within one frame of speech +/- margin, and all of the speech is kept.
    assert abs(begin - (speech_start - keep)) <= frame
    assert abs((begin + len(trimmed)) - (speech_end + keep)) <= frame
    np.testing.assert_array_equal(trimmed[speech_start - begin : speech_end - begin], wav[speech_start:speech_end])

    loaded = load_audio(wav, sample_rate, vad=True)
    assert len(loaded) == len(trimmed)
    assert len(load_audio(wav, sample_rate)) == len(wav)


def test_vad_keeps_audio_that_is_all_speech(tone):
    assert len(vad_trim(tone, 16000)) == len(tone)


def test_audio_duration_for_arrays_and_bytes(wav_path, tone):
    assert audio_duration(tone, sample_rate=16000) == pytest.approx(1.0)
    assert audio_duration(np.stack([tone, tone]), sample_rate=8000) == pytest.approx(2.0)
    assert audio_duration(wav_path.read_bytes()) == pytest.approx(1.0)


# --- bad inputs: AudioError naming the input and the problem ----------------------------------


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.wav"
    with raises_naming(str(missing), "not found"):
        load_audio(missing)
    with raises_naming(str(missing), "not found"):
        audio_duration(str(missing))


def test_directory_is_not_a_file(tmp_path):
    with raises_naming(str(tmp_path), "directory"):
        load_audio(tmp_path)


def test_fifos_symlink_loops_and_empty_files_are_named_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with raises_naming(str(fifo), "not a regular file"):
        load_audio(fifo)
    with raises_naming(str(fifo), "not a regular file"):
        audio_duration(fifo)
    loop = tmp_path / "loop.wav"
    os.symlink(loop, loop)
    with raises_naming(str(loop), "symbolic link loop"):
        load_audio(loop)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with raises_naming(str(empty), "is empty (0 bytes)"):
        load_audio(empty)
    with raises_naming("/dev/null", "not a regular file"):
        load_audio("/dev/null")


def test_text_file_renamed_wav(tmp_path):
    fake = tmp_path / "notes.wav"
    fake.write_text("these are meeting notes, not audio\n" * 20)
    with raises_naming(str(fake), "not a readable audio file") as caught:
        load_audio(fake)
    assert isinstance(caught.value.__cause__, Exception)  # raised `from` the library error
    with raises_naming(str(fake), "not a readable audio file"):
        audio_duration(fake)


def test_truncated_files(tmp_path, tone):
    flac = write_wav(tmp_path / "tone.flac", tone, subtype="PCM_16").read_bytes()
    cut_flac = tmp_path / "cut.flac"
    cut_flac.write_bytes(flac[: len(flac) // 2])
    with raises_naming(str(cut_flac), "truncated"):
        load_audio(cut_flac)

    wav_bytes = write_wav(tmp_path / "tone16.wav", tone, subtype="PCM_16").read_bytes()
    cut_wav = tmp_path / "cut.wav"
    cut_wav.write_bytes(wav_bytes[: len(wav_bytes) // 2])
    with raises_naming(str(cut_wav), "truncated", "32000 data bytes"):
        load_audio(cut_wav)

    # A WAV streamed to a pipe declares a placeholder size: complete, not truncated.
    streamed = bytearray(wav_bytes)
    data_size = streamed.find(b"data") + 4
    streamed[data_size : data_size + 4] = (0xFFFFFFFF).to_bytes(4, "little")
    np.testing.assert_allclose(load_audio(bytes(streamed)), tone, atol=1 / 32768)

    header_only = wav_bytes[:10]
    with raises_naming("<bytes: 10 bytes>", "not a readable audio file"):
        load_audio(header_only)


def test_zero_samples(tmp_path):
    empty_wav = write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32))
    with raises_naming(str(empty_wav), "zero samples"):
        load_audio(empty_wav)
    with raises_naming("<array shape (0,) float32>", "zero samples"):
        load_audio(np.zeros(0, np.float32), 16000)
    with raises_naming("<bytes: 0 bytes>", "empty"):
        load_audio(b"")


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_samples(tone, tmp_path, bad_value):
    broken = tone.copy()
    broken[100] = bad_value
    with raises_naming("<array shape (16000,) float32>", "NaN or Inf"):
        load_audio(broken, 16000)
    path = write_wav(tmp_path / "broken.wav", broken)
    with raises_naming(str(path), "NaN or Inf"):
        load_audio(path)
    with raises_naming("<tensor shape (16000,) torch.float32>", "NaN or Inf"):
        load_audio(torch.from_numpy(broken), 16000)


def test_all_silence(tmp_path):
    assert SILENCE_PEAK == pytest.approx(1e-4)
    quiet = np.full(16000, SILENCE_PEAK / 2, np.float32)
    with raises_naming("<array shape (16000,) float32>", "is silent"):
        load_audio(quiet, 16000)
    path = write_wav(tmp_path / "silence.wav", np.zeros(16000, np.float32), subtype="PCM_16")
    with raises_naming(str(path), "is silent"):
        load_audio(path)
    # Just above the threshold is not silence.
    assert len(load_audio(np.full(16000, SILENCE_PEAK * 2, np.float32), 16000)) == 16000


def test_shorter_than_minimum(tone, wav_path):
    with raises_naming(str(wav_path), "too short", "min_duration 1.5"):
        load_audio(wav_path, min_duration=1.5)
    assert len(load_audio(wav_path, min_duration=1.0)) == 16000
    padded = np.concatenate([np.zeros(16000, np.float32), tone[:4000], np.zeros(16000, np.float32)])
    # 0.25 s of tone in 2.25 s of audio: long enough as is, too short once VAD trims it.
    assert len(load_audio(padded, 16000, min_duration=0.5)) == len(padded)
    with raises_naming("clip-7", "too short after VAD"):
        load_audio(padded, 16000, min_duration=0.5, vad=True, name="clip-7")


@pytest.mark.parametrize("source, type_name", [(42, "int"), ({"path": "a.wav"}, "dict"), (None, "NoneType")])
def test_unsupported_types(source, type_name):
    with raises_naming(f"<{type_name} ", "unsupported audio source type"):
        load_audio(source)
    with raises_naming(f"<{type_name} ", "unsupported audio source type"):
        audio_duration(source)


def test_error_texts_carry_no_heap_address_or_constant_name(tmp_path):
    class Opaque:
        pass

    with pytest.raises(AudioError) as refused:
        load_audio(Opaque())
    assert "0x" not in str(refused.value) and "<Opaque object>" in str(refused.value)
    with pytest.raises(AudioError) as silent:
        load_audio(np.zeros(16000, np.float32), 16000)
    assert "SILENCE_PEAK" not in str(silent.value) and "-80 dBFS" in str(silent.value)


def test_array_without_sample_rate(tone):
    with raises_naming("<array shape (16000,) float32>", "sample_rate is required"):
        load_audio(tone)
    with raises_naming("<tensor shape (16000,) torch.float32>", "sample_rate is required"):
        load_audio(torch.from_numpy(tone))
    with raises_naming("<array shape (16000,) float32>", "sample_rate must be a positive integer"):
        load_audio(tone, sample_rate=0)


def test_wrong_shapes():
    with raises_naming("<array shape (2, 3, 1000) float32>", "wrong shape"):
        load_audio(np.ones((2, 3, 1000), np.float32), 16000)
    with raises_naming("<array shape (100, 50) float32>", "wrong shape", "channel"):
        load_audio(np.ones((100, 50), np.float32), 16000)
    with raises_naming("<array shape () float32>", "wrong shape"):
        load_audio(np.array(0.5, np.float32), 16000)


def test_unsupported_dtypes():
    with raises_naming("<array shape (100,) int64>", "dtype int64"):
        load_audio(np.ones(100, np.int64), 16000)
    with raises_naming("<array shape (100,) complex64>", "dtype complex64"):
        load_audio(np.ones(100, np.complex64), 16000)


def test_text_mode_file_object(wav_path):
    with open(wav_path, "r", encoding="latin-1") as text_file:
        with raises_naming(f"<file object {str(wav_path)!r}>", "binary mode"):
            load_audio(text_file)


def test_container_without_audio_stream(tmp_path):
    if "mpeg4" not in av.codecs_available:
        pytest.skip("this FFmpeg build has no mpeg4 encoder to write a video-only file")
    path = tmp_path / "video_only.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with raises_naming(str(path), "no audio stream"):
        load_audio(path)
    with raises_naming(str(path), "no audio stream"):
        audio_duration(path)


def test_custom_name_used_in_messages():
    with raises_naming("utt-0042", "is silent"):
        load_audio(np.zeros(1000, np.float32), 16000, name="utt-0042")


def test_bad_parameters_are_config_errors(tone):
    with pytest.raises(ConfigError, match="target_sample_rate"):
        load_audio(tone, 16000, target_sample_rate=0)
    with pytest.raises(ConfigError, match="min_duration"):
        load_audio(tone, 16000, min_duration=-1)
    with pytest.raises(ConfigError, match="orig_sr"):
        resample(tone, -8000, 16000)


# ---------------------------------------------------------------- decompression bombs and lying headers

def test_decoding_stops_at_max_duration_for_a_stream_without_a_length():
    import tracemalloc

    bomb = live_webm(30.0)
    assert len(bomb) < 20_000  # 30 s of silence packets: tiny on the wire
    tracemalloc.start()
    with pytest.raises(AudioError, match=r"longer than the 5 s this accepts \(max_duration\)"):
        load_audio(bomb, max_duration=5.0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5 * 48000 * 4 * 3  # a few times 5 s of float32 at 48 kHz, not 30 s
    seconds = audio_duration(bomb, max_duration=5.0)  # counted, not decoded into memory, and cut short
    assert 5.0 < seconds < 6.0


def test_a_header_claiming_a_tiny_rate_is_refused_before_resampling(tmp_path):
    path = tmp_path / "one_hertz.wav"
    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 1, subtype="PCM_16")
    with pytest.raises(AudioError, match=r"one_hertz.wav: longer than the 14400 s"):
        load_audio(path)  # 16,000 s at 1 Hz: 256 M samples after resampling, never made
    assert len(load_audio(path, max_duration=None, target_sample_rate=None)) == 16000


def test_a_flac_written_to_a_pipe_without_a_length_loads():
    wav = (0.1 * np.random.default_rng(1).standard_normal(48000)).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, wav, 16000, format="FLAC")
    streamed = bytearray(buffer.getvalue())
    streamed[21] &= 0xF0  # STREAMINFO's 36-bit total-sample count: 0, "unknown", as a pipe writer leaves it
    streamed[22:26] = bytes(4)
    loaded = load_audio(bytes(streamed), target_sample_rate=None)
    np.testing.assert_allclose(loaded, wav, atol=1e-4)
    assert audio_duration(bytes(streamed)) == pytest.approx(3.0)  # counted: the header's 2**63 frames are not believed


def test_arrays_obey_max_duration_and_bad_limits_are_config_errors():
    with pytest.raises(AudioError, match="longer than the 1 s"):
        load_audio(np.full(32000, 0.1, dtype=np.float32), 16000, max_duration=1.0)
    for bad in (0, -1.0, "1h", True):
        with pytest.raises(ConfigError, match="max_duration"):
            load_audio(np.full(16000, 0.1, dtype=np.float32), 16000, max_duration=bad)


@pytest.mark.parametrize("field, value", [("format tag", 0x1234), ("bits per sample", 0)])
def test_a_wav_with_an_unknown_format_tag_or_no_bits_is_an_audio_error(tmp_path, field, value):
    import struct

    buffer = io.BytesIO()
    sf.write(buffer, np.full(16000, 0.1, np.float32), 16000, format="WAV", subtype="PCM_16")
    data = bytearray(buffer.getvalue())
    offset = data.find(b"fmt ") + (8 if field == "format tag" else 22)
    data[offset:offset + 2] = struct.pack("<H", value)
    path = tmp_path / "odd.wav"
    path.write_bytes(bytes(data))
    with raises_naming(str(path), "codec this FFmpeg cannot decode"):
        load_audio(path)
    with raises_naming(str(path), "codec this FFmpeg cannot decode"):
        audio_duration(path)
