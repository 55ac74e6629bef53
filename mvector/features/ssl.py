"""Self-supervised speech models from Hugging Face ``transformers`` as a front-end (``HFModel``).

WavLM, wav2vec 2.0, HuBERT and w2v-BERT 2.0 turn audio into hidden states, one set per layer; a
speaker backbone reads one layer, or a softmax-weighted sum of several with learnt weights (the
lower and middle layers carry most speaker information, so SSL speaker-verification recipes learn
the mix). ``transformers`` is an extra (``pip install "mvector-sv[hf]"``), imported only when an
``HFModel`` is built.

A model directory names the SSL model's folder or hub id and pins the sha256 of its weights
(``method_args.sha256``, written by training), so a predictor refuses a folder holding other
weights. Frozen (the default), the SSL weights stay in that folder and only the layer weights are
trained; with ``freeze: false`` they are fine-tuned and saved with the model's own weights.
"""
import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from mvector.errors import ConfigError, ModelMismatchError
from mvector.features.base import FEATURIZERS, Featurizer, normalize_over_time, valid_mask
from mvector.features.kaldi import Fbank
from mvector.registry import Registry

HF_EXTRA = 'pip install "mvector-sv[hf]"'
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
# What a hub download fetches: the model's config, its feature-extractor config and its weights.
HUB_FILES = ["*.json", *WEIGHT_PATTERNS]


def import_transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"the HFModel front-end needs Hugging Face transformers: {HF_EXTRA}") from None
    return transformers


def weights_sha256(folder: Path) -> str:
    """sha256 of a model folder's weight files, read in name order (what the model is, not its configs)."""
    files = sorted({f for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern)})
    if not files:
        raise ConfigError(f"HFModel: {folder} holds no weights ({' or '.join(WEIGHT_PATTERNS)})")
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def resolve_model_folder(model: str) -> Path:
    """The local folder of ``model``: a folder as given, or a hub id from the Hugging Face cache,
    downloaded when it is not there yet."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"HFModel: {path} is not a Hugging Face model folder (config.json is missing)")
        return path
    if path.is_absolute() or model.startswith(".") or model.count("/") > 1:
        raise ConfigError(f"HFModel: model folder not found: {path}")
    import_transformers()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:  # not in the cache yet: fetch it below
        pass
    try:
        return Path(snapshot_download(model, allow_patterns=HUB_FILES))
    except Exception as exc:  # network down, no such repository, access refused: one message for all
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ConfigError(f"HFModel: cannot fetch Hugging Face model '{model}' ({reason}). Where the hub cannot be "
                          f"reached, download it elsewhere (huggingface-cli download {model} --local-dir DIR), "
                          f"copy the folder here and set preprocess_conf.method_args.model to it") from None


def quietly_loaded(transformers, folder: Path):
    """``AutoModel`` of ``folder`` in float32, without transformers' progress bar (left as it was)."""
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        return transformers.AutoModel.from_pretrained(str(folder)).float()
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()


def read_preprocessor_config(folder: Path) -> dict:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"HFModel: {path}: not valid JSON ({exc})") from None


def layer_states(output) -> torch.Tensor:
    """``[L + 1, B, T, H]``: the embedding output and every layer's, the last one as the model outputs it.
    (transformers 5 records a stable-layer-norm model's last layer before its final LayerNorm, 4.x after.)"""
    return torch.stack((*output.hidden_states[:-1], output.last_hidden_state))


class WaveformInputs(nn.Module):
    """The waveform itself (wav2vec 2.0, WavLM, HuBERT), zero-mean unit-variance per utterance when
    the model was trained so. Models whose first convolution group-normalises over time see the whole
    padded row, so each utterance is run alone there; the others take an attention mask."""

    def __init__(self, config, preprocessor: dict, normalize):
        super().__init__()
        # Wav2Vec2FeatureExtractor's default when the folder does not say.
        self.normalize = bool(preprocessor.get("do_normalize", True) if normalize is None else normalize)
        self.one_by_one = getattr(config, "feat_extract_norm", "layer") == "group"
        self.convolutions = list(zip(config.conv_kernel, config.conv_stride))
        self.num_states, self.hidden_size = config.num_hidden_layers + 1, config.hidden_size

    def frame_lengths(self, lengths):
        for kernel, stride in self.convolutions:  # the feature encoder's unpadded convolutions
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths.clamp(min=0)

    def run(self, model, waveforms, lengths, frame_lengths):
        """Hidden states of every layer, ``[L + 1, B, T, H]``."""
        mask = valid_mask(lengths, waveforms.shape[1])
        if self.normalize:
            waveforms = normalize_over_time(waveforms, lengths, scale=True)
        if not self.one_by_one:
            return layer_states(model(waveforms, attention_mask=mask.long(), output_hidden_states=True))
        frames = int(frame_lengths.max())
        rows = []
        for row, length, count in zip(waveforms, lengths.tolist(), frame_lengths.tolist()):
            if count > 0:
                states = layer_states(model(row[None, :length], output_hidden_states=True))[:, 0]
            else:  # too short for one frame: nothing to run (its frames are masked anyway)
                states = waveforms.new_zeros(self.num_states, 0, self.hidden_size)
            rows.append(nn.functional.pad(states, (0, 0, 0, frames - states.shape[1])))
        return torch.stack(rows, dim=1)


class StackedFbankInputs(nn.Module):
    """w2v-BERT 2.0's inputs (SeamlessM4TFeatureExtractor): 80-bin Kaldi Fbank of int16-scaled samples,
    each bin normalised to zero mean and unit variance over the utterance, pairs of frames stacked."""

    def __init__(self, config, preprocessor: dict, normalize):
        super().__init__()
        if normalize is not None:
            raise ConfigError("HFModel: 'normalize' applies to waveform models; w2v-BERT always normalises "
                              "its Fbank bins (leave it null)")
        self.fbank = Fbank(sample_rate=int(preprocessor.get("sampling_rate", 16000)),
                           num_mel_bins=int(preprocessor.get("num_mel_bins", 80)))
        self.stride = int(preprocessor.get("stride", 2))

    def frame_lengths(self, lengths):
        return self.fbank.frame_lengths(lengths) // self.stride

    def run(self, model, waveforms, lengths, frame_lengths):
        features, fbank_lengths = self.fbank(waveforms, lengths)
        features = normalize_over_time(features, fbank_lengths, scale=True, ddof=1)
        batch, frames, bins = features.shape
        features = nn.functional.pad(features, (0, 0, 0, -frames % self.stride))
        stacked = features.reshape(batch, -1, bins * self.stride)
        mask = valid_mask(frame_lengths, stacked.shape[1]).long()
        return layer_states(model(stacked, attention_mask=mask, output_hidden_states=True))


# What each supported model type (its config's model_type) reads.
SSL_INPUTS = Registry("SSL model type")
for _model_type in ("wav2vec2", "wavlm", "hubert"):
    SSL_INPUTS[_model_type] = WaveformInputs
SSL_INPUTS["wav2vec2-bert"] = StackedFbankInputs


@FEATURIZERS.register
class HFModel(Featurizer):
    """Hidden states of a Hugging Face speech model as features ``[B, T, hidden_size]``.

    ``model``: a local folder (config.json and weights) or a hub id. ``layers``: ``all`` (a learnt
    softmax-weighted sum of the embedding output and every layer), ``last``, or a list of indices
    into those (0 is the embedding output). ``freeze``: keep the SSL weights fixed (only the layer
    weights learn) or fine-tune them. ``normalize``: null reads ``do_normalize`` from the folder's
    preprocessor_config.json. ``sha256``: the weights this front-end was trained with; another
    folder's weights are an error (training fills it in).
    """

    exportable = False
    export_refusal = ("the HFModel front-end (transformers) does not export to ONNX or OpenVINO yet; nothing was "
                      "written. Use the torch backend for this model")

    def __init__(self, model, layers="all", freeze=True, normalize=None, sha256=None, sample_rate=16000):
        super().__init__(sample_rate)
        where = f"HFModel '{model}'"
        if not isinstance(model, str) or not model:
            raise ConfigError(f"HFModel: 'model' must be a folder or a hub id, got {model!r}")
        transformers = import_transformers()
        self.folder = resolve_model_folder(model)
        self.sha256 = weights_sha256(self.folder)
        if sha256 is not None and sha256 != self.sha256:
            raise ModelMismatchError(f"{where}: the weights in {self.folder} (sha256 {self.sha256[:16]}...) are not the "
                                     f"ones this model was trained with ({str(sha256)[:16]}...); point "
                                     f"preprocess_conf.method_args.model at that model's folder")
        preprocessor = read_preprocessor_config(self.folder)
        rate = preprocessor.get("sampling_rate")
        if rate is not None and rate != self.sample_rate:
            raise ConfigError(f"{where} reads audio at {rate} Hz, not at sample_rate {self.sample_rate}")
        try:  # the model type is checked before the weights are read
            config = transformers.AutoConfig.from_pretrained(str(self.folder))
            inputs = SSL_INPUTS.get_class(config.model_type, where=f"{where}: ")
            ssl = quietly_loaded(transformers, self.folder)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"{where}: transformers cannot load {self.folder}: {' '.join(str(exc).split())[:300]}") \
                from None
        self.inputs = inputs(ssl.config, preprocessor, normalize)
        # LayerDrop skips layers at random while training, which would leave the layer mix without them.
        ssl.config.layerdrop = 0.0
        self.layers = self._layer_indices(layers, ssl.config.num_hidden_layers, where)
        self.hidden_size = int(ssl.config.hidden_size)
        self.freeze = bool(freeze)
        if len(self.layers) > 1:
            self.layer_weights = nn.Parameter(torch.zeros(len(self.layers)))
        if self.freeze:
            # Outside the module tree: no optimizer, DDP or state dict sees it (its sha256 names it);
            # _apply still moves it with the rest.
            ssl.requires_grad_(False)
            object.__setattr__(self, "frozen_model", ssl.eval())
        else:
            self.model = ssl

    @staticmethod
    def _layer_indices(layers, num_layers, where) -> list:
        if layers == "all":
            return list(range(num_layers + 1))
        if layers == "last":
            return [num_layers]
        if (not isinstance(layers, list) or not layers or len(set(layers)) != len(layers)
                or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= num_layers for i in layers)):
            raise ConfigError(f"{where}: 'layers' must be all, last or a list of distinct layer indices in "
                              f"[0, {num_layers}] (0: the embedding output), got {layers!r}")
        return list(layers)

    @property
    def ssl_model(self):
        return self.frozen_model if self.freeze else self.model

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        if self.freeze:
            self.frozen_model._apply(fn, *args, **kwargs)
        return self

    @property
    def may_leave_parameters_unused(self) -> bool:
        return not self.freeze  # a fine-tuned model's masking embedding, layers above the last one mixed

    def pinned_args(self) -> dict:
        return {"sha256": self.sha256}

    @property
    def feature_dim(self) -> int:
        return self.hidden_size

    def frame_lengths(self, lengths):
        return self.inputs.frame_lengths(lengths)

    def _compute(self, waveforms, lengths, frame_lengths):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            states = self.inputs.run(self.ssl_model, waveforms, lengths, frame_lengths)[self.layers]
        if len(self.layers) == 1:
            return states[0]
        weights = torch.softmax(self.layer_weights, dim=0)
        return (states * weights[:, None, None, None]).sum(0)
