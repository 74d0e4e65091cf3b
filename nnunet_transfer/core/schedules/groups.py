"""Parameter groups of nnU-Net networks, derived by anchored name patterns and matched by identity.

The default patterns come from the network's architecture spec (:mod:`nnunet_transfer.core.architectures`; register
a spec there to give your own family its groups). For the architectures nnU-Net ships (PlainConvUNet,
ResidualEncoderUNet):

* ``encoder.stem`` - the stem of residual encoders (absent in PlainConvUNet);
* ``encoder.stage{i}`` - encoder stage ``i`` (0 = highest resolution);
* ``decoder.stage{j}`` - decoder stage ``j`` with the transposed convolution that feeds it (0 = deepest);
* ``heads`` - the segmentation heads (``decoder.seg_layers.*``).

Primus: ``encoder.stem`` (patch embedding, position embedding, register tokens), ``encoder.stage{i}`` (transformer
block ``i``; the last one also holds the final norm), ``heads`` (the patch decoder). Any other architecture: one
group ``all``.

Other architectures take explicit patterns: ``{"name": [regex, ...]}``, each regex matched against the whole
parameter name (``re.fullmatch``). Every parameter must fall in exactly one group, and every group must hold one.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from nnunet_transfer.core.architectures import architecture_for
from nnunet_transfer.core.modules import unwrap_network
from nnunet_transfer.errors import RecipeError

__all__ = ["ParameterGroup", "default_group_patterns", "derive_groups", "select_groups"]


@dataclass
class ParameterGroup:
    """A named set of parameters (each parameter of the network is in exactly one group). ``params`` train under
    the group's schedule; ``fixed`` never train (the pretrained weights of a group with LoRA adapters, see
    :func:`nnunet_transfer.core.adapters.split_fixed`)."""

    name: str
    names: list[str]
    params: list[nn.Parameter]
    fixed_names: list[str] = field(default_factory=list)
    fixed: list[nn.Parameter] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    @property
    def fixed_numel(self) -> int:
        return sum(p.numel() for p in self.fixed)


def default_group_patterns(network: nn.Module) -> dict[str, list[str]]:
    """Group patterns the network's architecture spec declares (see module docstring)."""
    return architecture_for(network).group_patterns(unwrap_network(network))


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
