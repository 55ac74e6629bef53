"""Exported graphs (ONNX under ONNX Runtime or OpenVINO, TorchScript, torch.export) give PyTorch's
embeddings on real speech."""
import importlib.util
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from mvector.inference.backends import INPUT_NAMES, ONNX_FILE, OUTPUT_NAME, OpenVinoBackend
from mvector.apps.cli import export, run_cli
from mvector.config import load_config
from mvector.embedder import build_embedder
from mvector.models.sequence import LSTMEncoder
from mvector.errors import ConfigError, ModelMismatchError, MVectorError
from mvector.inference.export import PT2_FILE, TORCHSCRIPT_FILE, export_model
from mvector.model_dir import load_embedder, save_model_dir
from mvector.inference.predictor import MIN_DURATION, MVectorPredictor
from predict_helpers import ROOT, coloured_noise, dev_files, make_model_dir

pytestmark = pytest.mark.integration

COS = 0.9999


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("model") / "m", state={"threshold": 0.42})


@pytest.fixture(scope="module")
def torch_predictor(model_dir):
    return MVectorPredictor(model_dir)


@pytest.fixture(scope="module")
def speech(torch_predictor):
    """Real recordings of different lengths as the model hears them, and PyTorch's embeddings."""
    waves = [torch_predictor.load(f) for f in dev_files(5)]
    return waves, torch_predictor.embed_waveforms(waves)


@pytest.fixture(scope="module")
def onnx_dir(model_dir, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path_factory.mktemp("exported") / "onnx"
    written = export_model(model_dir, out, "onnx,pt2")  # pt2 reuses the torch.export program ONNX needs
    assert written == {"onnx": out / ONNX_FILE, "pt2": out / PT2_FILE}
    return out


def padded(waves):
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for row, wav in zip(batch, waves):
        row[: len(wav)] = torch.from_numpy(wav)
    return batch, lengths


def assert_same_embeddings(got, expected):
    got = torch.nn.functional.normalize(torch.as_tensor(np.asarray(got)), dim=1).numpy()
    cosines = np.sum(got * expected, axis=1)
    assert cosines.min() > COS, cosines


@pytest.mark.slow
@pytest.mark.data
def test_onnx_runtime_matches_pytorch_on_real_speech(onnx_dir, speech):
    waves, expected = speech
    predictor = MVectorPredictor(onnx_dir, backend="onnx", batch_size=2)  # padded batches of unequal lengths
    assert predictor.threshold == 0.42  # config and state travel with the graph
    assert_same_embeddings(predictor.embed_waveforms(waves), expected)


def test_onnx_graph_has_dynamic_batch_and_time_axes_and_the_front_end_inside(onnx_dir):
    import onnx
    import onnxruntime as ort

    inputs = ort.InferenceSession(str(onnx_dir / ONNX_FILE)).get_inputs()
    assert [i.name for i in inputs] == ["waveforms", "lengths"]
    waveforms, lengths = inputs[0].shape, inputs[1].shape
    assert all(isinstance(d, str) for d in waveforms) and lengths == waveforms[:1]
    # The Fbank front-end is in the graph (it takes waveforms, not features): its frame-to-spectrum
    # matrix (400-sample frames to 257 real and 257 imaginary parts) and its log.
    graph = onnx.load(str(onnx_dir / ONNX_FILE)).graph
    assert (400, 2 * 257) in {tuple(tensor.dims) for tensor in graph.initializer}
    assert "Log" in {node.op_type for node in graph.node}


def test_exported_directory_is_a_complete_model_directory(onnx_dir, model_dir):
    for name in ("model.pth", "config.yml", "model.state"):
        assert (onnx_dir / name).read_bytes() == (model_dir / name).read_bytes()


@pytest.mark.data
def test_onnx_path_can_be_given_and_a_missing_or_broken_file_is_named(onnx_dir, model_dir, speech, tmp_path):
    waves, expected = speech
    predictor = MVectorPredictor(model_dir, backend="onnx", onnx_path=onnx_dir / ONNX_FILE)
    assert_same_embeddings(predictor.embed_waveforms(waves[:2]), expected[:2])
    with pytest.raises(MVectorError, match=f"{model_dir / ONNX_FILE}: ONNX file not found"):
        MVectorPredictor(model_dir, backend="onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(ModelMismatchError, match="broken.onnx: cannot load the ONNX model"):
        MVectorPredictor(model_dir, backend="onnx", onnx_path=broken)
    with pytest.raises(ConfigError, match="onnx_path"):
        MVectorPredictor(model_dir, onnx_path=onnx_dir / ONNX_FILE)  # the torch backend takes no ONNX file


@pytest.mark.data
def test_openvino_matches_pytorch_on_real_speech(onnx_dir, speech):
    pytest.importorskip("openvino")
    waves, expected = speech
    predictor = MVectorPredictor(onnx_dir, backend="openvino", batch_size=2)  # padded batches, as above
    assert predictor.threshold == 0.42 and predictor.embd_dim == expected.shape[1]
    assert_same_embeddings(predictor.embed_waveforms(waves), expected)
    # OpenVINO's own default on CPUs with bf16 units is bf16, which gave the shipped model cosines
    # to float32 of 0.97 on average and 0.77 at worst on dev speech (dev EER 4.46 % -> 4.11 %):
    # the precision must stay pinned.
    assert predictor._backend._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"


@pytest.mark.data
def test_openvino_serves_several_threads_with_the_same_embeddings(onnx_dir, speech):
    pytest.importorskip("openvino")
    waves, expected = speech
    predictor = MVectorPredictor(onnx_dir, backend="openvino")
    with ThreadPoolExecutor(4) as pool:  # the server calls one predictor from several threads
        got = list(pool.map(lambda i: predictor.embed_waveforms([waves[i % len(waves)]])[0], range(12)))
    assert_same_embeddings(got, np.stack([expected[i % len(waves)] for i in range(12)]))


def test_openvino_refuses_a_gpu_a_broken_file_and_a_missing_install(onnx_dir, model_dir, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    with pytest.raises(MVectorError, match="use_gpu=True: the OpenVINO backends run on the CPU"):
        MVectorPredictor(onnx_dir, backend="openvino", use_gpu=True)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(ModelMismatchError, match="broken.onnx: cannot load the ONNX model"):
        MVectorPredictor(model_dir, backend="openvino", onnx_path=broken)
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    with pytest.raises(MVectorError, match=r"openvino is not installed.*a dependency of mvector-sv: pip install openvino"):
        MVectorPredictor(onnx_dir, backend="openvino")


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_a_graph_of_other_weights_is_refused(backend, onnx_dir, tmp_path):
    """Retraining into an exported folder leaves model.onnx behind: the graph no longer embeds with
    the weights whose fingerprint keys the voiceprint library, so it must not load."""
    pytest.importorskip(backend if backend == "openvino" else "onnxruntime")
    retrained = tmp_path / "retrained"
    shutil.copytree(onnx_dir, retrained)
    other = make_model_dir(tmp_path / "other", seed=1)
    shutil.copy2(other / "model.pth", retrained / "model.pth")
    with pytest.raises(ModelMismatchError, match=r"model.onnx was exported from another model \(fingerprint "
                                                 r"[0-9a-f]{16}\), not from the weights in .*retrained.*"
                                                 r"export_model.py --model_dir"):
        MVectorPredictor(retrained, backend=backend)
    with pytest.raises(ModelMismatchError, match="exported from another model"):  # the same through onnx_path
        MVectorPredictor(other, backend=backend, onnx_path=onnx_dir / ONNX_FILE)


def test_a_graph_that_records_no_source_model_is_refused(onnx_dir, tmp_path):
    import onnx

    unmarked = tmp_path / "unmarked.onnx"
    graph = onnx.load(str(onnx_dir / ONNX_FILE))
    del graph.metadata_props[:]
    onnx.save(graph, str(unmarked))
    with pytest.raises(ModelMismatchError, match="unmarked.onnx records no source model"):
        MVectorPredictor(onnx_dir, backend="onnx", onnx_path=unmarked)


@pytest.mark.data
def test_torch_export_program_matches_pytorch(onnx_dir, speech):
    waves, expected = speech
    program = torch.export.load(str(onnx_dir / PT2_FILE)).module()
    with torch.inference_mode():
        assert_same_embeddings(program(*padded(waves)), expected)


@pytest.mark.data
@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:DeprecationWarning")
def test_torchscript_matches_pytorch_on_real_speech(model_dir, speech, tmp_path):
    waves, expected = speech
    written = export_model(model_dir, tmp_path / "ts", ["torchscript"])
    assert written == {"torchscript": tmp_path / "ts" / TORCHSCRIPT_FILE}
    traced = torch.jit.load(str(written["torchscript"]))
    with torch.inference_mode():
        assert_same_embeddings(traced(*padded(waves)), expected)
        assert_same_embeddings(traced(*padded(waves[:1])), expected[:1])  # another batch size


def test_unknown_format_is_one_line_naming_the_valid_ones(model_dir, tmp_path, capsys):
    assert run_cli(export, model_dir, tmp_path / "out", "onnx,tflite") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tflite" in err and "onnx, pt2, torchscript" in err
    with pytest.raises(ConfigError, match="no export format"):
        export_model(model_dir, tmp_path / "out", " , ")


# Every backbone at a few channels and one block per stage: export time goes into tracing, not width.
TINY_BACKBONES = {
    "tdnn": ["channels=16"],
    "ecapa_tdnn": ["channels=16", "scale=2"],
    "cam++": ["growth_rate=4", "bn_size=2", "init_channels=8", "fcm_channels=4", "block_layers=[1,1,1]"],
    "eres2net": ["m_channels=4", "num_blocks=[1,1,1,1]"],
    "resnet_se": ["num_filters=[4,4,8,8]", "layers=[1,1,1,1]", "se_reduction=2"],
    "res2net": ["m_channels=4", "layers=[1,1,1,1]"],
    # Stacked one-way layers here; the bidirectional layer exports in tests/test_default_backend.py.
    "lstm": ["hidden_size=8", "num_layers=2", "bidirectional=false"],
    "transformer": ["d_model=8", "num_heads=2", "num_layers=1"],
    "rescnn": ["channels=[4,4,8,8]", "blocks=1"],
}
# Lengths other than those traced (2.0 s, 1.3 s) or checked by the exporter: alone (the shortest allowed,
# one long enough for several CAM++ segments and 48x-strided Res2Net frames) and in one padded batch.
ONNX_CHECK_SECONDS = [(MIN_DURATION,), (7.37,), (0.55, 4.03, MIN_DURATION, 1.01)]


# The LSTM exports as a scan over frames, which needs torch >= 2.6; before it, export refuses it in one
# clear error.
NOT_EXPORTABLE_YET = set() if LSTMEncoder.exportable else {"lstm"}


@pytest.mark.slow
@pytest.mark.parametrize("config_name", sorted(set(TINY_BACKBONES) - NOT_EXPORTABLE_YET))
def test_every_backbone_exports_to_onnx_matching_pytorch_at_unseen_lengths(config_name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    overrides = ["model_conf.model_args." + o for o in TINY_BACKBONES[config_name] + ["embd_dim=16"]]
    config = load_config(ROOT / "configs" / f"{config_name}.yml",
                         overrides=overrides + ["preprocess_conf.method_args.num_mel_bins=40"])
    torch.manual_seed(0)
    weights = {"backbone." + k: v for k, v in build_embedder(config).backbone.state_dict().items()}
    model_dir = save_model_dir(tmp_path / "model", weights, config, {"threshold": 0.5})
    path = export_model(model_dir, tmp_path / "exported", "onnx")["onnx"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    engines = {"onnxruntime": lambda feeds: session.run([OUTPUT_NAME], feeds)[0]}
    if importlib.util.find_spec("openvino") is not None:  # the same graph under OpenVINO, when installed
        openvino = OpenVinoBackend(tmp_path / "exported", onnx_path=path)
        engines["openvino"] = lambda feeds: openvino(*feeds.values())
    embedder, _, _ = load_embedder(model_dir, "cpu")
    for seed, seconds in enumerate(ONNX_CHECK_SECONDS):
        waves, lengths = padded([coloured_noise(s, seed=10 * seed + i) for i, s in enumerate(seconds)])
        with torch.inference_mode():
            expected = torch.nn.functional.normalize(embedder(waves, lengths), dim=1).numpy()
        feeds = {INPUT_NAMES[0]: waves.numpy(), INPUT_NAMES[1]: lengths.numpy()}
        for run in engines.values():
            assert_same_embeddings(run(feeds), expected)


@pytest.mark.slow
@pytest.mark.parametrize("config_name", sorted(NOT_EXPORTABLE_YET))
def test_a_backbone_that_does_not_export_yet_is_refused_in_one_clear_error(config_name, tmp_path):
    pytest.importorskip("onnxruntime")
    overrides = ["model_conf.model_args." + o for o in TINY_BACKBONES[config_name] + ["embd_dim=16"]]
    config = load_config(ROOT / "configs" / f"{config_name}.yml",
                         overrides=overrides + ["preprocess_conf.method_args.num_mel_bins=40"])
    weights = {"backbone." + k: v for k, v in build_embedder(config).backbone.state_dict().items()}
    model_dir = save_model_dir(tmp_path / "model", weights, config, {"threshold": 0.5})
    with pytest.raises(MVectorError, match="does not export to ONNX or OpenVINO yet.*nothing was written"):
        export_model(model_dir, tmp_path / "exported", "onnx")
    assert not (tmp_path / "exported" / "model.onnx").exists()


def test_the_missing_graph_hint_is_a_command_whose_output_then_loads(model_dir, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import re
    import shlex
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)
    with pytest.raises(MVectorError) as error:
        MVectorPredictor(model_dir, backend="onnx")
    command = re.search(r"export the model with (python export_model\.py .*?), then give (\S+) as", str(error.value))
    assert command, str(error.value)
    argv = shlex.split(command.group(1))
    done = subprocess.run([sys.executable, str(ROOT / argv[1]), *argv[2:]], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "torchvision" not in done.stderr  # torch's exporter notes on operators a speaker model never uses
    assert MVectorPredictor(tmp_path / command.group(2), backend="onnx").embd_dim == MVectorPredictor(model_dir).embd_dim
