"""Parameter groups of nnU-Net networks, derived by anchored name patterns and matched by identity.

Default groups for the architectures nnU-Net ships (PlainConvUNet, ResidualEncoderUNet):

* ``encoder.stem`` - the stem of residual encoders (absent in PlainConvUNet);
* ``encoder.stage{i}`` - encoder stage ``i`` (0 = highest resolution);
* ``decoder.stage{j}`` - decoder stage ``j`` with the transposed convolution that feeds it (0 = deepest);
* ``heads`` - the segmentation heads (``decoder.seg_layers.*``).

Primus: ``encoder.stem`` (patch embedding, position embedding), ``encoder.stage{i}`` (transformer block ``i``; the
last one also holds the final norm), ``heads`` (the patch decoder). Any other architecture: one group ``all``.

Other architectures take explicit patterns: ``{"name": [regex, ...]}``, each regex matched against the whole
parameter name (``re.fullmatch``). Every parameter must fall in exactly one group, and every group must hold one.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from nnunet_transfer.errors import RecipeError

__all__ = ["ParameterGroup", "default_group_patterns", "derive_groups", "select_groups"]


@dataclass
class ParameterGroup:
    """A named set of parameters (each parameter of the network is in exactly one group)."""

    name: str
    names: list[str]
    params: list[nn.Parameter]

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


def _indices(names: Sequence[str], prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for n in names if (m := pat.match(n))})


def default_group_patterns(network: nn.Module) -> dict[str, list[str]]:
    """Group patterns for PlainConvUNet / ResidualEncoderUNet style names (see module docstring)."""
    names = [n for n, _ in network.named_parameters()]
    groups: dict[str, list[str]] = {}
    if any(n.startswith("encoder.stem.") for n in names):
        groups["encoder.stem"] = [r"encoder\.stem\..+"]
    for i in _indices(names, "encoder.stages."):
        groups[f"encoder.stage{i}"] = [rf"encoder\.stages\.{i}\..+"]
    for j in sorted(set(_indices(names, "decoder.stages.")) | set(_indices(names, "decoder.transpconvs."))):
        groups[f"decoder.stage{j}"] = [rf"decoder\.stages\.{j}\..+", rf"decoder\.transpconvs\.{j}\..+"]
    if any(n.startswith("decoder.seg_layers.") for n in names):
        groups["heads"] = [r"decoder\.seg_layers\..+"]
    if not groups and any(n.startswith("eva.blocks.") for n in names):  # Primus: patch embedding, ViT, patch decoder
        blocks = _indices(names, "eva.blocks.")
        groups["encoder.stem"] = [r"down_projection\..+", r"eva\.(?!blocks\.|norm\.).+"]
        for i in blocks:
            groups[f"encoder.stage{i}"] = [rf"eva\.blocks\.{i}\..+"] + ([r"eva\.norm\..+"] if i == blocks[-1] else [])
        groups["heads"] = [r"up_projection\..+"]
    if not groups:  # an architecture we have no names for: one group (give patterns in the recipe to split it)
        groups["all"] = [r".+"]
    return groups


def derive_groups(network: nn.Module, patterns: Mapping[str, Sequence[str]] | None = None) -> list[ParameterGroup]:
    """Split the (unwrapped) network's parameters into groups, each parameter exactly once, in group order.

    Raises :class:`~nnunet_transfer.errors.RecipeError` naming the parameter that matches no group or several, or
    the group that matches nothing.
    """
    patterns = dict(patterns) if patterns else default_group_patterns(network)
    compiled = {g: [re.compile(p) for p in pats] for g, pats in patterns.items()}
    groups = {g: ParameterGroup(g, [], []) for g in patterns}
    for name, param in network.named_parameters():  # named_parameters() yields each tensor once (no aliases)
        hits = [g for g, pats in compiled.items() if any(p.fullmatch(name) for p in pats)]
        if not hits:
            raise RecipeError(f"parameter {name!r} matches no parameter group (groups: {list(patterns)}); "
                              "add a pattern for it")
        if len(hits) > 1:
            raise RecipeError(f"parameter {name!r} matches several parameter groups: {hits}")
        groups[hits[0]].names.append(name)
        groups[hits[0]].params.append(param)
    empty = [g for g, grp in groups.items() if not grp.params]
    if empty:
        raise RecipeError(f"parameter group(s) {empty} match no parameter of this network")
    return list(groups.values())


def select_groups(selectors: Sequence[str], group_names: Sequence[str], where: str) -> list[str]:
    """Group names matched by shell-style selectors (``encoder.*``, ``heads``); an unmatched selector is an error."""
    out: list[str] = []
    for sel in selectors:
        hits = [g for g in group_names if fnmatch.fnmatchcase(g, sel)]
        if not hits:
            raise RecipeError(f"{where}: {sel!r} matches no parameter group (groups: {list(group_names)})")
        out.extend(h for h in hits if h not in out)
    return out
