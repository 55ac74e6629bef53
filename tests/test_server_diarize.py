"""POST /diarize on a real server process with the default model: segments of a real meeting,
speakers named from the library, its own duration and upload limits, bad input, and a long job
that leaves the server answering."""
import io
import threading
import time

import httpx
import numpy as np
import pytest
import soundfile as sf

from predict_helpers import DATA, dev_by_speaker
from server_helpers import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.data, pytest.mark.slow]

pytest.importorskip("fastapi")

KEY = "diarize-test-key"
AMI = DATA / "diarization" / "ami"
MAX_DIARIZE_SECONDS = 200
MAX_UPLOAD_MB = 1
MAX_DIARIZE_UPLOAD_MB = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diarize_server")
    with ServerProcess(["--audio_db_path", folder / "db", "--max_upload_mb", MAX_UPLOAD_MB,
                        "--max_diarize_seconds", MAX_DIARIZE_SECONDS, "--max_diarize_upload_mb", MAX_DIARIZE_UPLOAD_MB],
                       folder / "server.log", api_key=KEY) as running:
        yield running


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as http:
        yield http


def wav_bytes(wav, rate=16000) -> bytes:
    out = io.BytesIO()
    sf.write(out, wav, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def conversation(speakers, utterances_each=3):
    """Turns of whole dev utterances, speaker after speaker: ``(wav bytes, [(start, end, speaker)])``."""
    by_speaker = dev_by_speaker()
    pieces, turns, cursor = [], [], 0.0
    for turn in range(utterances_each):
        for speaker in speakers:
            wav, _ = sf.read(by_speaker[speaker][turn], dtype="float32")
            pieces += [wav, np.zeros(8000, dtype=np.float32)]
            turns.append((cursor, cursor + len(wav) / 16000, speaker))
            cursor += (len(wav) + 8000) / 16000
    return wav_bytes(np.concatenate(pieces)), turns


def test_a_meeting_is_diarized(client):
    answer = client.post("/diarize", files={"audio": ("dev00.flac", (AMI / "dev00.flac").read_bytes())})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    segments = body["segments"]
    assert segments and all(0 <= s["start"] < s["end"] <= 30.0 for s in segments)
    assert [s["start"] for s in segments] == sorted(s["start"] for s in segments)
    assert body["speakers"] == list(dict.fromkeys(s["speaker"] for s in segments))
    forced = client.post("/diarize", files={"audio": ("dev00.flac", (AMI / "dev00.flac").read_bytes())},
                         data={"num_speakers": "2"}).json()
    assert forced["speakers"] == ["speaker-1", "speaker-2"]


def test_speakers_take_their_registered_names(client):
    speakers = sorted(dev_by_speaker())[:2]
    enrolled = speakers[0]
    audio, turns = conversation(speakers)
    enrolment = dev_by_speaker()[enrolled][-1].read_bytes()
    registered = client.post("/register", files={"audio": ("e.flac", enrolment)}, data={"name": "Enrolled Person"},
                             headers={"Authorization": f"Bearer {KEY}"})
    assert registered.status_code == 200, registered.text
    body = client.post("/diarize", files={"audio": ("conv.wav", audio)}, data={"name_speakers": "true"}).json()
    assert sorted(body["speakers"]) == ["Enrolled Person", "unknown-1"], body
    for segment in body["segments"]:
        middle = (segment["start"] + segment["end"]) / 2
        truth = next((s for a, b, s in turns if a <= middle <= b), None)
        if truth is not None:
            assert (segment["speaker"] == "Enrolled Person") == (truth == enrolled), (segment, truth)


def test_its_own_limits_and_bad_input(client, server):
    two_mib = wav_bytes(np.tile(sf.read(AMI / "trn00.flac", dtype="float32")[0], 3))  # 90 s: 2.7 MiB
    assert client.post("/recognize", files={"audio": ("a.wav", two_mib)}).status_code == 413
    assert client.post("/diarize", files={"audio": ("a.wav", two_mib)}).status_code == 200
    too_long = wav_bytes(np.tile(sf.read(AMI / "trn00.flac", dtype="float32")[0], 7)[: 16000 * (MAX_DIARIZE_SECONDS + 5)])
    answer = client.post("/diarize", files={"audio": ("long.wav", too_long)})
    assert answer.status_code == 422 and "longer than this server accepts (200 s)" in answer.json()["detail"]
    oversize = client.post("/diarize", files={"audio": ("big.wav", b"\0" * (MAX_DIARIZE_UPLOAD_MB * 2**20 + 1))})
    assert oversize.status_code == 413 and "at most 8 MiB" in oversize.json()["detail"]
    silent = client.post("/diarize", files={"audio": ("s.wav", wav_bytes(np.zeros(16000 * 5, dtype=np.float32)))})
    assert silent.status_code == 422 and "silent" in silent.json()["detail"]
    answer = client.post("/diarize", files={"audio": ("dev00.flac", (AMI / "dev00.flac").read_bytes())},
                         data={"num_speakers": "0"})
    assert answer.status_code == 422 and "num_speakers" in answer.text
    health = client.get("/health").json()
    assert health["max_diarize_seconds"] == MAX_DIARIZE_SECONDS and health["max_diarize_upload_mb"] == MAX_DIARIZE_UPLOAD_MB


def test_a_long_diarization_leaves_the_server_answering(client, server):
    long_meeting = wav_bytes(np.tile(sf.read(AMI / "trn05.flac", dtype="float32")[0], 6))  # 3 minutes
    done = {}

    def diarize():
        done["answer"] = httpx.post(server.url + "/diarize", files={"audio": ("m.wav", long_meeting)}, timeout=300)

    worker = threading.Thread(target=diarize)
    worker.start()
    time.sleep(1.0)
    latencies = []
    while worker.is_alive() and len(latencies) < 20:
        started = time.perf_counter()
        assert client.get("/health").status_code == 200
        latencies.append(time.perf_counter() - started)
        time.sleep(0.1)
    worker.join()
    assert done["answer"].status_code == 200, done["answer"].text
    assert latencies and max(latencies) < 2.0, latencies  # the event loop was never blocked by the job
