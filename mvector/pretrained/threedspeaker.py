"""Import 3D-Speaker checkpoints (github.com/modelscope/3D-Speaker, Apache-2.0) as mvector model
directories.

    import_3dspeaker("campplus_cn_en_common.pt", "models/campplus_3dspeaker")

3D-Speaker publishes plain state dicts (e.g. ModelScope's ``iic/speech_campplus_sv_zh_en_16k-common_
advanced``). Its models are ours under other tensor names; each architecture it publishes is one
entry of ``THREED_SPEAKER_MODELS``: a key only its checkpoints hold, our backbone and its arguments,
and the renaming table. Only CAM++ is claimed: ERes2Net and ECAPA-TDNN would be entries of the same
kind, added once a test proves their parity with 3D-Speaker's code.

The front-end is 3D-Speaker's: 80-bin Kaldi Fbank of [-1, 1] samples (torchaudio's
``compliance.kaldi.fbank`` with dither 0, as its inference does), per-utterance mean normalisation,
no loudness normalisation; its statistics pooling takes the unbiased (N-1) standard deviation.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mvector.config import config_from_dict
from mvector.errors import ConfigError, ModelMismatchError
from mvector.fileio import file_sha256
from mvector.model_dir import MODEL_FILE, load_state_dict_file, save_model_dir
from mvector.pretrained.mapping import KeyRule, StateDictMapping, renamed, squeeze_last
from mvector.registry import Registry

THREED_SPEAKER_MODELS = Registry("3D-Speaker architecture")

# 3D-Speaker's inference front-end (speakerlab/process/processor.py FBank): Kaldi defaults, no
# dither, on torchaudio's [-1, 1] samples, hence wave_scale 1 (it decides where log's floor bites).
FRONTEND = {"feature_method": "Fbank",
            "method_args": {"sample_rate": 16000, "num_mel_bins": 80, "wave_scale": 1.0},
            "mean_norm": True}
# Its statistics pooling: torch.std (N-1) with no floor; a negligible one keeps fine-tuning's
# gradients finite on a constant channel (sqrt'(0) is infinite).
UNBIASED_STATS = {"unbiased": True, "var_floor": 1e-12}


@dataclass(frozen=True)
class ThreeDSpeakerModel:
    signature: str                     # a key only this architecture's checkpoints hold
    model: str                         # our backbone (mvector.models.BACKBONES)
    model_args: Callable[[dict], dict]  # its arguments, read off the checkpoint's shapes
    mapping: StateDictMapping


_LAYER = r"xvector\.block(?P<block>\d+)\.tdnnd(?P<layer>\d+)\."
_OURS_LAYER = "blocks.{block}.layers.{layer}."
_LAYER_SHIFT = {"block": -1, "layer": -1}

THREED_SPEAKER_MODELS["CAMPPlus"] = ThreeDSpeakerModel(
    signature="xvector.block1.tdnnd1.cam_layer.linear_local.weight",
    model="CAMPPlus",
    model_args=lambda source: {"embd_dim": int(source["xvector.dense.linear.weight"].shape[0]),
                               "pooling_type": "TSTP", "pooling_args": dict(UNBIASED_STATS)},
    mapping=StateDictMapping((
        KeyRule(r"head\.(?P<name>conv1|bn1|conv2|bn2)\.(?P<p>\w+)", renamed("head.{name}.{p}")),
        # FCM: two stages of two residual blocks -> one list of four.
        KeyRule(r"head\.layer(?P<stage>[12])\.(?P<i>[01])\.(?P<rest>.+)",
                lambda m: f"head.blocks.{2 * (int(m['stage']) - 1) + int(m['i'])}.{m['rest']}"),
        KeyRule(r"xvector\.tdnn\.linear\.weight", renamed("tdnn.0.weight")),
        KeyRule(r"xvector\.tdnn\.nonlinear\.batchnorm\.(?P<p>\w+)", renamed("tdnn.1.{p}")),
        KeyRule(_LAYER + r"nonlinear1\.batchnorm\.(?P<p>\w+)", renamed(_OURS_LAYER + "bn_in.{p}", _LAYER_SHIFT)),
        KeyRule(_LAYER + r"linear1\.weight", renamed(_OURS_LAYER + "bottleneck.weight", _LAYER_SHIFT)),
        KeyRule(_LAYER + r"nonlinear2\.batchnorm\.(?P<p>\w+)", renamed(_OURS_LAYER + "bn_mid.{p}", _LAYER_SHIFT)),
        KeyRule(_LAYER + r"cam_layer\.linear_local\.weight", renamed(_OURS_LAYER + "local.weight", _LAYER_SHIFT)),
        KeyRule(_LAYER + r"cam_layer\.linear1\.(?P<p>\w+)", renamed(_OURS_LAYER + "context_down.{p}", _LAYER_SHIFT)),
        KeyRule(_LAYER + r"cam_layer\.linear2\.(?P<p>\w+)", renamed(_OURS_LAYER + "context_up.{p}", _LAYER_SHIFT)),
        KeyRule(r"xvector\.transit(?P<block>\d+)\.nonlinear\.batchnorm\.(?P<p>\w+)",
                renamed("transitions.{block}.0.{p}", {"block": -1})),
        KeyRule(r"xvector\.transit(?P<block>\d+)\.linear\.weight", renamed("transitions.{block}.2.weight", {"block": -1})),
        KeyRule(r"xvector\.out_nonlinear\.batchnorm\.(?P<p>\w+)", renamed("out_norm.0.{p}")),
        KeyRule(r"xvector\.dense\.linear\.weight", renamed("embedding.weight"), reshape=squeeze_last),
        KeyRule(r"xvector\.dense\.nonlinear\.batchnorm\.(?P<p>\w+)", renamed("embedding_norm.{p}")),
    )),
)


def load_checkpoint(path) -> dict:
    """A 3D-Speaker checkpoint's state dict (loaded with ``weights_only``: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint file")
    return load_state_dict_file(path, "as a PyTorch state dict")


def detect_architecture(source: dict, where: str, model: str = None) -> ThreeDSpeakerModel:
    """The entry of THREED_SPEAKER_MODELS whose signature key the checkpoint holds (or ``model``)."""
    if model is not None:
        entry = THREED_SPEAKER_MODELS.get_class(model, where=f"{where}: ")
        if entry.signature not in source:
            raise ModelMismatchError(f"{where}: not a 3D-Speaker {model} checkpoint: it has no tensor "
                                     f"{entry.signature!r}")
        return entry
    found = [entry for entry in THREED_SPEAKER_MODELS.values() if entry.signature in source]
    if not found:
        raise ModelMismatchError(f"{where}: not a checkpoint of a 3D-Speaker architecture mvector imports "
                                 f"({', '.join(sorted(THREED_SPEAKER_MODELS))})")
    return found[0]


def threedspeaker_config(entry: ThreeDSpeakerModel, source: dict, dataset_conf: dict = None) -> dict:
    """The validated mvector config of an imported checkpoint."""
    return config_from_dict({
        "dataset_conf": {"sample_rate": FRONTEND["method_args"]["sample_rate"], "use_db_normalization": False,
                         **(dataset_conf or {})},
        "preprocess_conf": FRONTEND,
        "model_conf": {"model": entry.model, "model_args": entry.model_args(source)},
    }, where="3D-Speaker import")


def import_3dspeaker(checkpoint, out_dir, model: str = None, dataset_conf: dict = None,
                     overwrite: bool = False) -> Path:
    """Write the model directory ``out_dir`` from a 3D-Speaker checkpoint (architecture detected from
    its tensors unless ``model`` names one). ``dataset_conf`` overrides e.g. its embedding windows.
    An existing ``out_dir`` is replaced only with ``overwrite`` and only when it is a model directory."""
    from mvector.embedder import build_embedder

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out_dir} already exists and is not empty; choose another --out_dir "
                              f"(or pass overwrite to replace a model directory)")
        if not (out_dir / MODEL_FILE).is_file():
            raise ConfigError(f"{out_dir} is not a model directory ({MODEL_FILE} missing); it is not replaced")
    source = load_checkpoint(checkpoint)
    entry = detect_architecture(source, str(checkpoint), model)
    config = threedspeaker_config(entry, source, dataset_conf)
    backbone = build_embedder(config).backbone
    weights = entry.mapping.apply(source, backbone.state_dict(), where=str(checkpoint))
    state = {"imported_from": {"toolkit": "3D-Speaker", "architecture": entry.model, "checkpoint": checkpoint.name,
                               "sha256": file_sha256(checkpoint).hexdigest()}}
    save_model_dir(out_dir, {f"backbone.{k}": v.float() if v.is_floating_point() else v for k, v in weights.items()},
                   config, state)
    return out_dir
