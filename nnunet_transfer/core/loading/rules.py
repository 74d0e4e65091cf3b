"""How a load decides, tensor by tensor, and how a checkpoint format or a network family extends it.

:func:`~nnunet_transfer.core.loading.loader.plan_load` pairs every tensor of the target network with the checkpoint
tensor of the same (normalised) name and asks a chain of :data:`TensorRule` functions what to do with the pair: the
first rule that answers with a :class:`Decision` (load, adapt or skip, with its reason code) wins. The chain is

1. the rules of the checkpoint's :class:`LoadFormat` (:meth:`LoadFormat.rules`),
2. rules registered for the network's architecture family (:func:`register_tensor_rule` with ``family``), then
   those registered for every network,
3. the loader's own rules: non-finite values, segmentation heads, exact shapes, positional embeddings, adapted
   convolutions (:data:`nnunet_transfer.core.loading.loader.TENSOR_RULES`).

A checkpoint format is a :class:`LoadFormat` subclass that says when it applies and overrides the steps it changes:
its key map (applied after the user's), its rules, the token grid hints of its positional embedding, and a last
look at the records (:meth:`LoadFormat.finish`: reasons for what it leaves fresh, notes). The nnssl format
(:mod:`nnunet_transfer.core.loading.nnssl_map`) is one; :func:`register_load_format` adds another without an edit of
the loader.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from nnunet_transfer.core.loading.keys import KeyMap, KeyMapping
from nnunet_transfer.core.loading.report import LabelMatch, TensorRecord

if TYPE_CHECKING:
    from nnunet_transfer.core.architectures import ArchitectureSpec
    from nnunet_transfer.core.loading.checkpoint import SourceCheckpoint
    from nnunet_transfer.core.loading.heads import HeadChannels
    from nnunet_transfer.core.loading.options import LoadOptions

__all__ = [
    "Decision",
    "LoadContext",
    "LoadFormat",
    "TensorCase",
    "TensorRule",
    "decide",
    "format_for",
    "register_load_format",
    "register_tensor_rule",
    "rules_for",
    "unregister_load_format",
    "unregister_tensor_rule",
]


@dataclass
class Decision:
    """What to do with one target tensor: ``status`` (loaded / adapted / skipped), its reason code and text, and the
    value to copy (None when skipped)."""

    status: str
    code: str
    reason: str
    value: torch.Tensor | None = None
    label_mapping: list[LabelMatch] = field(default_factory=list)  # a head's channels, name by name


@dataclass
class TensorCase:
    """One target tensor (every name it has, canonical first) and the checkpoint tensor found for it."""

    names: list[str]
    target: torch.Tensor
    owner: nn.Module | None  # the module that holds it
    source_key: str
    source: torch.Tensor
    is_head: bool

    @property
    def key(self) -> str:
        return self.names[0]


@dataclass
class LoadContext:
    """What every rule may consult: the (unwrapped) network, the checkpoint, the options, the architecture spec."""

    network: nn.Module
    source: SourceCheckpoint
    options: LoadOptions
    spec: ArchitectureSpec
    head_re: re.Pattern[str]
    positional_embedding: str | None  # the target's learnable positional embedding (a state-dict name), if any
    target_names: frozenset[str]
    first_conv: frozenset[str]  # canonical names of the input projection's weights
    source_channels: HeadChannels | None
    target_channels: HeadChannels | None
    format: LoadFormat = field(init=False)
    nonfinite: list[str] = field(default_factory=list)  # checkpoint tensors with NaN/Inf that would be loaded


TensorRule = Callable[[LoadContext, TensorCase], "Decision | None"]


class LoadFormat:
    """A checkpoint format's steps of a load. The base is the plain format (nnU-Net's checkpoints, state dicts):
    tensors by name, nothing added. Subclasses set :meth:`applies` and override the steps they change."""

    name: ClassVar[str] = "plain"

    def __init__(self, ctx: LoadContext):
        self.ctx = ctx

    @classmethod
    def applies(cls, source: SourceCheckpoint) -> bool:
        """Whether ``source`` is of this format."""
        return True

    def key_map(self) -> KeyMap | None:
        """A key map applied after the user's (it sees the keys the user's map returns)."""
        return None

    def dropped(self) -> set[str]:
        """Checkpoint keys this format's key map dropped on purpose (said in its own note, not as the user's)."""
        return set()

    def rules(self) -> Sequence[TensorRule]:
        """Rules tried before all others."""
        return ()

    def token_grid_hints(self) -> list[list[int]]:
        """Candidate token grids of the checkpoint's positional embedding (first that fits wins)."""
        return []

    def finish(self, records: list[TensorRecord], mapping: KeyMapping) -> list[str]:
        """A last look at every record once all are decided (reasons for what stays fresh); returns notes."""
        return []

    def mismatch(self) -> str | None:
        """When checkpoint and target network are of different families: one sentence saying what each is and what
        to do (said first when the guard refuses the load); None otherwise."""
        return None


_FORMATS: list[type[LoadFormat]] = []
_RULES: list[tuple[str | None, TensorRule]] = []


def register_load_format(cls: type[LoadFormat]) -> type[LoadFormat]:
    """Add a checkpoint format (usable as a class decorator); formats registered later are asked first."""
    if not (isinstance(cls, type) and issubclass(cls, LoadFormat)):
        raise TypeError(f"{cls!r}: a load format is a subclass of LoadFormat")
    if cls not in _FORMATS:
        _FORMATS.insert(0, cls)
    return cls


def unregister_load_format(cls: type[LoadFormat]) -> None:
    """Remove a format added by :func:`register_load_format` (nothing if it is not registered)."""
    if cls in _FORMATS:
        _FORMATS.remove(cls)


def format_for(ctx: LoadContext) -> LoadFormat:
    """The first registered format that applies to the checkpoint (the plain format if none does), bound to ``ctx``."""
    cls = next((f for f in _FORMATS if f.applies(ctx.source)), LoadFormat)
    fmt = cls(ctx)
    ctx.format = fmt
    return fmt


def register_tensor_rule(rule: TensorRule, family: str | None = None) -> TensorRule:
    """Add a rule asked before the loader's own (for networks of architecture ``family`` only, e.g.
    ``"ResidualEncoderUNet"``, or for all when None). Rules registered later are asked first."""
    if not callable(rule):
        raise TypeError(f"{rule!r}: a tensor rule is a function (context, case) -> Decision or None")
    _RULES.insert(0, (family, rule))
    return rule


def unregister_tensor_rule(rule: TensorRule) -> None:
    """Remove every registration of ``rule``."""
    _RULES[:] = [(f, r) for f, r in _RULES if r is not rule]


def rules_for(ctx: LoadContext, own: Iterable[TensorRule]) -> list[TensorRule]:
    """The chain for this load: the format's rules, the family's, those for all networks, then ``own``."""
    family = [r for f, r in _RULES if f is not None and f == ctx.spec.name]
    every = [r for f, r in _RULES if f is None]
    return [*ctx.format.rules(), *family, *every, *own]


def decide(rules: Sequence[TensorRule], ctx: LoadContext, case: TensorCase) -> Decision:
    """The first rule's answer; a case no rule answers is skipped (the loader's last rule always answers)."""
    for rule in rules:
        decision = rule(ctx, case)
        if decision is not None:
            return decision
    raise LookupError(f"no rule decided {case.key!r}")  # pragma: no cover - the loader's last rule always answers

