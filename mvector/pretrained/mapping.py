"""Strict renaming of another toolkit's state dict into one of our backbones.

A ``StateDictMapping`` is a table of rules, each a regular expression over the source key and a
function of its match that names our key (and optionally reshapes the tensor). Applying it is
strict: every source tensor must match exactly one rule and land on a distinct key of our model
with the same shape, and every tensor of our model must be filled; otherwise ModelMismatchError
names the first problem, so a checkpoint of another architecture or size never loads half-way.
"""
import re
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from mvector.errors import ModelMismatchError


@dataclass(frozen=True)
class KeyRule:
    """Source keys matching ``pattern`` (whole key) become ``target(match)``; ``reshape`` maps the
    tensor (e.g. a 1x1 Conv1d kernel ``[O, I, 1]`` onto a Linear weight ``[O, I]``)."""
    pattern: str
    target: Callable[[re.Match], str]
    reshape: Optional[Callable[[torch.Tensor], torch.Tensor]] = None


def renamed(template: str, shifts: dict = None) -> Callable[[re.Match], str]:
    """A rule target: ``template`` formatted with the match's named groups, integer groups listed in
    ``shifts`` moved by that amount (their toolkits count layers from 1, ours from 0)."""
    shifts = shifts or {}

    def target(match):
        groups = dict(match.groupdict())
        for name, offset in shifts.items():
            groups[name] = int(groups[name]) + offset
        return template.format(**groups)

    return target


def squeeze_last(tensor: torch.Tensor) -> torch.Tensor:
    """``[O, I, 1]`` 1x1 convolution kernel -> ``[O, I]`` linear weight."""
    if tensor.dim() != 3 or tensor.shape[-1] != 1:
        raise ModelMismatchError(f"expected a 1x1 convolution kernel [O, I, 1], got {tuple(tensor.shape)}")
    return tensor[..., 0]


@dataclass(frozen=True)
class StateDictMapping:
    rules: tuple

    def apply(self, source: dict, target_state: dict, where: str) -> dict:
        """``source`` renamed onto the keys of ``target_state`` (our model's ``state_dict()``)."""
        compiled = [(re.compile(rule.pattern), rule) for rule in self.rules]
        mapped, origin = {}, {}
        for key, tensor in source.items():
            hits = [(pattern.fullmatch(key), rule) for pattern, rule in compiled]
            hits = [(match, rule) for match, rule in hits if match]
            if len(hits) != 1:
                problem = "matches no rule" if not hits else f"matches {len(hits)} rules"
                raise ModelMismatchError(f"{where}: tensor {key!r} {problem} of the mapping; this checkpoint "
                                         f"is not of the architecture being imported")
            match, rule = hits[0]
            ours = rule.target(match)
            if ours not in target_state:
                raise ModelMismatchError(f"{where}: tensor {key!r} maps to {ours!r}, which the model does not have")
            if ours in mapped:
                raise ModelMismatchError(f"{where}: tensors {origin[ours]!r} and {key!r} both map to {ours!r}")
            value = rule.reshape(tensor) if rule.reshape else tensor
            if tuple(value.shape) != tuple(target_state[ours].shape):
                raise ModelMismatchError(f"{where}: tensor {key!r} has shape {tuple(tensor.shape)} but {ours!r} "
                                         f"needs {tuple(target_state[ours].shape)}")
            mapped[ours], origin[ours] = value, key
        missing = [k for k in target_state if k not in mapped]
        if missing:
            raise ModelMismatchError(f"{where}: the checkpoint has nothing for {len(missing)} tensor(s) of the "
                                     f"model, e.g. {', '.join(missing[:3])}")
        return mapped
