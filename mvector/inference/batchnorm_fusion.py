"""Inference-only rewrite: BatchNorm folded into the convolution that feeds it.

In eval mode a BatchNorm is a fixed per-channel affine map, so ``bn(conv(x))`` equals one
convolution with rescaled weights and a bias, and the BatchNorm pass over memory disappears.

Which BatchNorms can be folded is read off one real forward pass rather than guessed from module
names: a pair qualifies only when every call of the BatchNorm received the very output of the same
convolution and the autograd graph shows that output read by nothing else (a residual branch, an
in-place ReLU or a mask in between all disqualify it). The rewritten copy is then run on the same
inputs and must reproduce the original outputs.
"""
import copy
import math

import torch
from torch import nn

from mvector.errors import MVectorError

FOLDABLE_CONVS = (nn.Conv1d, nn.Conv2d)
FOLDABLE_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
# A folded model whose outputs differ from the original's by more than this (relative L2) is refused.
MAX_RELATIVE_ERROR = 1e-3


def noise_batch(seconds, sample_rate: int, seed: int):
    """``(waveforms[B, N], lengths[B])``: a padded batch of noise at speech-like level, one row per
    duration in ``seconds``; example inputs for checking a rewritten or exported embedder."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([math.ceil(s * sample_rate) for s in seconds], dtype=torch.long)
    waves = 0.1 * torch.randn(len(seconds), int(lengths.max()), generator=generator)
    waves = torch.where(torch.arange(waves.shape[1]) < lengths[:, None], waves, torch.zeros(()))
    return waves, lengths


def _tensors(value):
    """The tensors in a (nested) output: a tensor, tuple, list or dict."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []


def _check_eval(module: nn.Module) -> None:
    training = [name or type(module).__name__ for name, m in module.named_modules() if m.training]
    if training:
        raise MVectorError(f"fuse_batchnorm: the model is in training mode ({', '.join(training[:3])}"
                           f"{' ...' if len(training) > 3 else ''}); BatchNorm folds only with its running "
                           f"statistics, i.e. in eval mode: call model.eval() first")


def _consumers(outputs) -> dict:
    """Autograd node -> the nodes that read its result, over the graph that produced ``outputs``."""
    readers, seen = {}, set()
    stack = [t.grad_fn for t in _tensors(outputs) if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                readers.setdefault(child, []).append(node)
                stack.append(child)
    return readers


def _foldable(conv, norm) -> bool:
    return (isinstance(conv, FOLDABLE_CONVS) and isinstance(norm, FOLDABLE_NORMS)
            and norm.running_mean is not None and conv.out_channels == norm.num_features)


def conv_bn_pairs(module: nn.Module, example_inputs: tuple) -> list:
    """``[(conv_name, batchnorm_name)]`` of the BatchNorms of eval-mode ``module`` that read only
    the output of one convolution, itself read by nothing else, in ``module(*example_inputs)``."""
    _check_eval(module)
    names = {m: n for n, m in module.named_modules()}
    conv_out, norm_in, norm_out = {}, {}, {}  # module -> [grad_fn node per call]

    def record(store):
        return lambda mod, args, out=None: store.setdefault(mod, []).append(
            (args[0] if out is None else out).grad_fn)

    hooks = []
    for m in names:
        if isinstance(m, FOLDABLE_CONVS):
            hooks.append(m.register_forward_hook(record(conv_out)))
        elif isinstance(m, FOLDABLE_NORMS):
            hooks += [m.register_forward_pre_hook(record(norm_in)), m.register_forward_hook(record(norm_out))]
    # The graph is what tells who reads a tensor, so the pass records one even under inference_mode
    # (inputs made there are cloned: autograd cannot save inference tensors).
    weights = [m.weight for m in names if isinstance(m, FOLDABLE_CONVS)]
    flags = [w.requires_grad for w in weights]
    try:
        for w in weights:
            w.requires_grad_(True)
        with torch.inference_mode(False), torch.enable_grad():
            inputs = [x.clone() if isinstance(x, torch.Tensor) else x for x in example_inputs]
            readers = _consumers(module(*inputs))
    finally:
        for hook in hooks:
            hook.remove()
        for w, flag in zip(weights, flags):
            w.requires_grad_(flag)
    producer = {node: conv for conv, nodes in conv_out.items() for node in nodes if node is not None}
    pairs = []
    for norm, inputs in norm_in.items():
        convs = {producer.get(node) for node in inputs}
        if len(convs) != 1 or None in convs:
            continue
        conv = convs.pop()
        # Every call of the conv feeds this BatchNorm and nothing else.
        if len(conv_out[conv]) != len(inputs) or not _foldable(conv, norm):
            continue
        if all(readers.get(node) == [out] for node, out in zip(inputs, norm_out[norm])):
            pairs.append((names[conv], names[norm]))
    return pairs


@torch.no_grad()
def _fold(conv: nn.Module, norm: nn.Module) -> None:
    """Rescale ``conv`` in place so that it computes ``norm(conv(x))`` (``norm`` in eval mode)."""
    scale = (norm.running_var.double() + norm.eps).rsqrt()
    shift = -norm.running_mean.double() * scale
    if norm.affine:
        scale, shift = scale * norm.weight.double(), shift * norm.weight.double() + norm.bias.double()
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    weight = conv.weight.double() * scale.reshape(-1, *[1] * (conv.weight.dim() - 1))
    # empty_like keeps the weight's memory format (channels-last 2-D backbones stay channels-last).
    conv.weight = nn.Parameter(torch.empty_like(conv.weight).copy_(weight), requires_grad=conv.weight.requires_grad)
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)


def _replace(root: nn.Module, target: nn.Module, replacement: nn.Module) -> None:
    """Put ``replacement`` wherever ``target`` is registered (a shared module has several places)."""
    for name, parent in root.named_modules(remove_duplicate=False):
        for key, child in list(parent.named_children()):
            if child is target:
                setattr(parent, key, replacement)


def fuse_batchnorm(module: nn.Module, example_inputs: tuple) -> nn.Module:
    """A copy of eval-mode ``module`` with every foldable BatchNorm (see ``conv_bn_pairs``) folded
    into its convolution and replaced by ``nn.Identity``. ``example_inputs`` are the arguments of
    one forward call (e.g. ``(waveforms, lengths)`` of a SpeakerEmbedder); the copy must reproduce
    the original's outputs on them. ``module`` itself is left unchanged."""
    pairs = conv_bn_pairs(module, example_inputs)
    fused = copy.deepcopy(module)
    parts = dict(fused.named_modules())
    for conv_name, norm_name in pairs:
        _fold(parts[conv_name], parts[norm_name])
        _replace(fused, parts[norm_name], nn.Identity())
    with torch.inference_mode():
        expected, got = _tensors(module(*example_inputs)), _tensors(fused(*example_inputs))
    for want, have in zip(expected, got):
        if want.is_floating_point():
            error = float((have.double() - want.double()).norm() / want.double().norm().clamp(min=1e-12))
            if not error <= MAX_RELATIVE_ERROR:
                raise MVectorError(f"fuse_batchnorm: folding {len(pairs)} BatchNorm(s) of {type(module).__name__} "
                                   f"changed its outputs (relative error {error:.2e}); not folding")
    return fused
