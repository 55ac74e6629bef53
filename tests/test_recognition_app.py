"""The recognition app: non-interactive flags and exit codes, the interactive menu and continuous
mode (microphone replaced by real dev utterances), one-line errors. A small random-weights TDNN
stands in for a trained model: the same recording always matches itself best."""
import numpy as np
import pytest
import soundfile as sf

from mvector.audio import load_audio
from mvector.apps.microphone import MicrophoneError
from mvector.apps.recognition import (EXIT_ERROR, EXIT_NOT_RECOGNISED, EXIT_OK, RecognitionApp, main)
from predict_helpers import dev_by_speaker, make_model_dir

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("model") / "tiny_tdnn")


@pytest.fixture(scope="module")
def utterances():
    """Two utterances of one speaker and one of another, from the dev set."""
    by_speaker = dev_by_speaker()
    first, second = sorted(by_speaker)[:2]
    return by_speaker[first][0], by_speaker[first][1], by_speaker[second][0]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.data
def test_scripted_register_recognize_list_remove(tmp_path, model_dir, utterances, capsys):
    a1, a2, b1 = utterances
    common = ["--model_dir", model_dir, "--audio_db_path", tmp_path / "db"]
    assert run(capsys, "--recognize", "--audio", a1, *common)[0] == EXIT_ERROR  # no library there yet
    assert run(capsys, "--register", "夜雨飘零", "--audio", a1, *common)[:2] == (EXIT_OK, "Registered: 夜雨飘零\n")
    assert run(capsys, "--register", "bob", "--audio", b1, *common)[0] == EXIT_OK

    code, out, _ = run(capsys, "--recognize", "--audio", a1, *common)
    assert code == EXIT_OK and out.startswith("Recognised: 夜雨飘零 (score 1.0000)")
    code, out, _ = run(capsys, "--recognize", "--audio", b1, *common)
    assert code == EXIT_OK and out.startswith("Recognised: bob (score 1.0000)")
    # Another recording never reaches a threshold of 1: not recognised, with the best score.
    code, out, _ = run(capsys, "--recognize", "--audio", a2, "--threshold", "1.0", *common)
    assert code == EXIT_NOT_RECOGNISED
    assert out.startswith("Not recognised: best score 0.") and "below the threshold 1.0000" in out

    assert run(capsys, "--list", *common)[:2] == (EXIT_OK, "bob\n夜雨飘零\n")
    assert run(capsys, "--remove", "carl", *common)[:2] == (EXIT_NOT_RECOGNISED, "No such user: carl\n")
    assert run(capsys, "--remove", "bob", *common)[:2] == (EXIT_OK, "Removed: bob\n")
    assert run(capsys, "--list", *common)[:2] == (EXIT_OK, "夜雨飘零\n")
    assert run(capsys, "--remove", "夜雨飘零", *common)[0] == EXIT_OK
    assert run(capsys, "--list", *common)[:2] == (EXIT_OK, "")  # nothing for a script to misread


@pytest.mark.slow
@pytest.mark.data
def test_voices_enrolled_with_torch_are_recognised_through_openvino(tmp_path, model_dir, utterances, capsys):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxscript")
    from mvector.inference.export import export_model

    exported = tmp_path / "exported"
    export_model(model_dir, exported, "onnx")
    a1, _, b1 = utterances
    common = ["--model_dir", exported, "--audio_db_path", tmp_path / "db"]
    assert run(capsys, "--register", "alice", "--audio", a1, *common)[0] == EXIT_OK  # torch backend
    assert run(capsys, "--register", "bob", "--audio", b1, *common, "--backend", "openvino")[0] == EXIT_OK
    # One library, one model fingerprint: each backend finds the voice the other enrolled.
    code, out, _ = run(capsys, "--recognize", "--audio", a1, *common, "--backend", "openvino")
    assert code == EXIT_OK and out.startswith("Recognised: alice (score 1.0000)")
    code, out, _ = run(capsys, "--recognize", "--audio", b1, *common)
    assert code == EXIT_OK and out.startswith("Recognised: bob (score 1.0000)")


@pytest.mark.data
@pytest.mark.parametrize("argv, message", [
    (["--register", "../x"], "user name '../x' contains a path separator"),
    (["--register", "  "], "is empty"),
    (["--recognize", "--audio", "missing.wav"], "missing.wav: file not found"),
    (["--list", "--model_dir", "no/such/model"], "is not a model directory"),
    (["--register", ""], "user name '' is empty"),
    (["--remove", ""], "user name '' is empty"),
])
def test_errors_are_one_line_and_exit_2(tmp_path, model_dir, utterances, capsys, argv, message):
    from mvector.library.store import VoiceprintDB

    VoiceprintDB(tmp_path / "db").close()  # an existing, empty library
    if "--audio" not in argv and argv[0] not in ("--list", "--remove"):
        argv = argv + ["--audio", str(utterances[0])]
    if "--model_dir" not in argv:
        argv = argv + ["--model_dir", str(model_dir)]
    code, out, err = run(capsys, *argv, "--audio_db_path", tmp_path / "db")
    assert code == EXIT_ERROR
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("action", [["--list"], ["--recognize", "--audio", "x.wav"], ["--remove", "alice"]])
def test_a_library_that_does_not_exist_is_named_not_created(tmp_path, capsys, action):
    mistyped = tmp_path / "audio_bd"
    code, _, err = run(capsys, *action, "--audio_db_path", mistyped)
    assert code == EXIT_ERROR and err == (f"error: no voiceprint library at {mistyped} (no voiceprints.sqlite there); "
                                          f"register someone first (--register NAME), or give the library's folder "
                                          f"as --audio_db_path\n")
    assert not mistyped.exists()


@pytest.mark.parametrize("argv", [["--audio", "x.wav"], ["--list", "--audio", "x.wav"],
                                  ["--recognize", "--seconds", "0"], ["--list", "--remove", "a"]])
def test_bad_argument_combinations_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == EXIT_ERROR
    assert "error:" in capsys.readouterr().err


class Script:
    """Answers the app's prompts in order and records every prompt and printed line."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.lines = []

    def ask(self, prompt):
        self.lines.append(prompt)
        if not self.answers:
            raise EOFError
        return self.answers.pop(0)

    def out(self, line):
        self.lines.append(line)

    def text(self):
        return "\n".join(self.lines)


@pytest.fixture
def predictor(tmp_path, model_dir):
    from mvector.inference.predictor import MVectorPredictor
    with MVectorPredictor(model_dir=model_dir, audio_db_path=tmp_path / "db", threshold=0.5) as p:
        yield p


@pytest.mark.data
def test_interactive_menu_registers_recognises_lists_removes(predictor, utterances):
    voice = load_audio(utterances[0])
    recordings = []

    def record(seconds, sample_rate, on_start):
        recordings.append((seconds, sample_rate))
        on_start()
        return voice

    script = Script(["0", "", "alice", "1", "", "2", "3", "alice", "2", "7", "Q"])
    app = RecognitionApp(predictor, seconds=2.5, record=record, ask=script.ask, out=script.out)
    assert app.interactive() == EXIT_OK
    text = script.text()
    assert recordings == [(2.5, 16000), (2.5, 16000)]
    assert text.count("Recording 2.5 s ... speak now") == 2
    assert "Registered: alice" in text and "Recognised: alice (score 1.0000)" in text
    assert "Removed: alice" in text and "(no users registered)" in text
    assert "Unknown choice '7'" in text
    assert predictor.get_users() == []


def test_interactive_survives_action_errors_and_ends_on_eof(predictor):
    def broken_microphone(seconds, sample_rate, on_start):
        raise MicrophoneError("cannot record: no microphone")

    script = Script(["1", "", "3", "../etc", "2"])
    app = RecognitionApp(predictor, record=broken_microphone, ask=script.ask, out=script.out)
    assert app.interactive() == EXIT_OK  # prompts ran out: EOF quits
    text = script.text()
    assert "Error: cannot record: no microphone" in text
    assert "Error: user name '../etc'" in text
    assert "(no users registered)" in text


@pytest.mark.data
def test_continuous_recognition_reports_each_chunk(predictor, utterances):
    a1, _, b1 = utterances
    predictor.register(a1, "alice")
    chunk = load_audio(a1)
    closed = []

    def chunks(seconds, sample_rate, on_start):
        assert (seconds, sample_rate) == (2.0, 16000)
        on_start()
        try:
            yield chunk
            yield np.zeros(32000, np.float32)  # silence: reported, not fatal
            yield load_audio(b1)
        finally:
            closed.append(True)

    script = Script([])
    app = RecognitionApp(predictor, seconds=2.0, record_chunks=chunks, out=script.out)
    assert app.continuous() == EXIT_OK
    lines = [l for l in script.lines if l.startswith("[")]
    assert len(lines) == 3 and closed == [True]
    assert script.lines[0] == "Listening in 2 s chunks; Ctrl+C stops."
    assert lines[0] == "[    0.0 s] Recognised: alice (score 1.0000)"
    assert lines[1].startswith("[    2.0 s] (no usable speech:") and "silent" in lines[1]
    assert lines[2].startswith("[    4.0 s] ")


def test_continuous_stops_on_ctrl_c(predictor):
    def chunks(seconds, sample_rate, on_start):
        raise KeyboardInterrupt
        yield  # a generator, as the microphone's is

    script = Script([])
    assert RecognitionApp(predictor, record_chunks=chunks, out=script.out).continuous() == EXIT_OK
    assert script.lines[-1] == "Stopped."


@pytest.mark.data
def test_registered_audio_is_stored_in_the_library(tmp_path, predictor, utterances):
    predictor.register(utterances[0], "dora")
    files = list((tmp_path / "db").glob("*/*.flac"))
    assert len(files) == 1
    stored, rate = sf.read(files[0], dtype="float32")
    assert rate == 16000 and len(stored) > 16000
