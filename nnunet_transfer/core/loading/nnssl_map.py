"""How an nnssl (OpenMind) checkpoint loads: its declared stem, encoder and positional embedding onto those a target
network declares, the pretraining decoder and head left fresh with their reason.

:class:`NnsslKeyMap` maps the checkpoint's declared parts onto the target's, whatever prefixes either side uses
(contrastive variants prefix everything with ``encoder.``); the pretraining decoder and head reconstruct images: they
are not loaded unless asked for (``load_decoder``), the head never. :class:`NnsslFormat` is the nnssl
:class:`~nnunet_transfer.core.loading.rules.LoadFormat`: that key map, the positional embedding's token grid from the
plan, and the records of what stays fresh (only stem, encoder and positional embedding count towards coverage).
Reading the format (the adaptation plan) is :mod:`nnunet_transfer.core.nnssl`'s.
"""

from __future__ import annotations

import pydoc
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nnunet_transfer.core.loading.keys import KeyMap, KeyMapping, storage_id, strip_wrappers
from nnunet_transfer.core.loading.report import ReasonCode, TensorRecord
from nnunet_transfer.core.loading.rules import LoadContext, LoadFormat, register_load_format
from nnunet_transfer.core.nnssl import AdaptationPlan

__all__ = ["NnsslFormat", "NnsslKeyMap", "declared_parts", "nnssl_records"]


def declared_parts(network: Any, spec_name: str = "") -> tuple[str | None, str | None]:
    """(stem, encoder) a target network declares (``key_to_stem``, ``key_to_encoder``), with nnU-Net's layouts as
    defaults for the built-in families (``spec_name``: the network's architecture entry)."""
    defaults = {"PlainConvUNet": ("encoder.stages.0", "encoder.stages"),
                "ResidualEncoderUNet": ("encoder.stem", "encoder.stages"),
                "Primus": ("down_projection", "eva")}.get(spec_name, (None, None))

    def get(attr: str, default: str | None) -> str | None:
        value = getattr(network, attr, None)
        return value if isinstance(value, str) and value else default

    return get("key_to_stem", defaults[0]), get("key_to_encoder", defaults[1])


_STAGE = re.compile(r"(\d+)\.(?:blocks\.)?(?:(\d+)\.)?")


@dataclass
class NnsslKeyMap:
    """Maps checkpoint keys onto the target's names by the declared parts: the source's stem onto the target's
    stem, encoder onto encoder, positional embedding onto positional embedding (longest prefix first, so a stem
    inside the encoder, as in PlainConvUNet, goes to the stem). Everything else belongs to the pretraining decoder
    and head: dropped, unless ``load_decoder`` (then kept under its own name where the target has it; heads never).
    Callable as a loader ``key_map``; records what it dropped."""

    plan: AdaptationPlan
    target_stem: str | None
    target_encoder: str | None
    target_lpe: str | None
    target_names: frozenset[str]
    load_decoder: bool = False
    head_pattern: str = r"(?!)"
    dropped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        p = self.plan
        pairs = [(p.key_to_stem, self.target_stem, "stem"), (p.key_to_encoder, self.target_encoder, "encoder")]
        self._pairs = sorted(((s, t, what) for s, t, what in pairs if t), key=lambda x: -len(x[0]))
        self._head = re.compile(self.head_pattern)

    def __call__(self, key: str) -> str | None:
        name = strip_wrappers(key)
        if self.plan.key_to_lpe is not None and name == self.plan.key_to_lpe and self.target_lpe:
            return self.target_lpe
        for src, tgt, _ in self._pairs:
            if name.startswith(src + "."):
                return tgt + name[len(src):]
        if self.load_decoder and name in self.target_names and not self._head.fullmatch(name):
            return name
        self.dropped.append(key)
        return None

    def in_scope(self, names: Iterable[str]) -> bool:
        """Whether a target tensor (any of its names) is part of the stem, encoder or positional embedding."""
        prefixes = tuple(t + "." for t in (self.target_stem, self.target_encoder) if t)
        return any(n.startswith(prefixes) or n == self.target_lpe for n in names)

    def stage_of(self, name: str) -> tuple[int, int | None] | None:
        """(stage, block) of a target encoder tensor name (``<encoder>.<stage>.<block>.``), else None."""
        if not self.target_encoder or not name.startswith(self.target_encoder + "."):
            return None
        m = _STAGE.match(name[len(self.target_encoder) + 1:])
        if m is None:
            return None
        return int(m.group(1)), (int(m.group(2)) if m.group(2) is not None else None)

    def describe(self, not_loaded: int | None = None) -> str:
        """The note of the load; ``not_loaded``: the checkpoint's tensors left out, each counted once (default: the
        keys dropped, aliases included)."""
        p = self.plan
        parts = [f"{what} {src!r} -> {tgt!r}" for src, tgt, what in self._pairs]
        if p.key_to_lpe and self.target_lpe:
            parts.append(f"positional embedding {p.key_to_lpe!r} -> {self.target_lpe!r}")
        n = len(self.dropped) if not_loaded is None else not_loaded
        return (f"nnssl checkpoint ({p.architecture_plans.arch_class_name}): {', '.join(parts)}; "
                f"{n} tensors of the pretraining decoder and head not loaded"
                + (" (load_decoder: the decoder loads where names and shapes match; heads never)"
                   if self.load_decoder else " (recipe pretrained.load_decoder: true loads the decoder where shapes "
                                              "allow)"))


def nnssl_records(records: list[TensorRecord], nnssl_map: NnsslKeyMap, mapped: Iterable[str],
                  state_dict: Mapping[str, Any] | None = None) -> list[str]:
    """Say why what the nnssl checkpoint does not provide stays fresh; only stem, encoder and positional embedding
    count towards coverage. A pretraining decoder or head tensor the checkpoint holds (``state_dict``) under the
    target's name is ``skipped`` with both shapes; ``missing`` stays for what it does not hold. Returns notes for the
    report, each checkpoint tensor counted once (aliases of a loaded tensor are not "not loaded")."""
    state_dict = state_dict or {}
    held = {}
    for key in nnssl_map.dropped:
        held.setdefault(strip_wrappers(key), key)
    mapped = dict(mapped)  # raw checkpoint key -> target name
    mapped_keys = list(mapped)
    src_stages: dict[int, set[int | None]] = {}
    for name in mapped.values():
        st = nnssl_map.stage_of(name)
        if st is not None:
            src_stages.setdefault(st[0], set()).add(st[1])
    tgt_stages: set[int] = set()
    for rec in records:
        names = [rec.key, *rec.aliases]
        if not nnssl_map.in_scope(names):
            rec.in_coverage = False
            if rec.status == "missing":
                rec.code = ReasonCode.PRETRAINING_DECODER.value
                rec.reason = ("fresh: the pretraining network's head reconstructs images (nnssl); never loaded"
                              if rec.is_head else
                              "fresh: not part of the pretrained stem and encoder (nnssl: the pretraining decoder "
                              "reconstructed images)"
                              + ("" if nnssl_map.load_decoder else "; load_decoder: true loads it where shapes allow"))
                src_key = next((held[n] for n in names if n in held), None)
                if src_key is not None and src_key in state_dict:
                    rec.status = "skipped"
                    rec.source_key, rec.source_shape = src_key, list(state_dict[src_key].shape)
                    rec.reason = "in the checkpoint, not loaded: " + rec.reason.removeprefix("fresh: ")
            continue
        st = next((s for n in names if (s := nnssl_map.stage_of(n)) is not None), None)
        if st is None:
            continue
        tgt_stages.add(st[0])
        if rec.status != "missing":
            continue
        if st[0] not in src_stages:
            rec.code = ReasonCode.NEW_STAGE.value
            rec.reason = (f"fresh: the checkpoint's encoder has {len(src_stages)} stages; stage {st[0]} is the "
                          "target's own")
        elif st[1] is not None and st[1] not in src_stages[st[0]]:
            rec.code = ReasonCode.NEW_BLOCK.value
            rec.reason = (f"fresh: stage {st[0]} of the checkpoint's encoder has {len(src_stages[st[0]])} blocks; "
                          f"block {st[1]} is the target's own")
    loaded = {storage_id(state_dict[k]) for k in mapped_keys if k in state_dict}
    left = {storage_id(state_dict[k]) for k in nnssl_map.dropped if k in state_dict} - loaded
    notes = [nnssl_map.describe(len(left) if state_dict else None)]
    extra = sorted(set(src_stages) - tgt_stages)
    if extra and tgt_stages:
        notes.append(f"checkpoint encoder stages {extra} not loaded: the target's encoder has {len(tgt_stages)} "
                     "stages (the deepest are dropped)")
    return notes


@register_load_format
class NnsslFormat(LoadFormat):
    """An nnssl checkpoint (``SourceCheckpoint.nnssl`` set by the reader): the declared parts onto the target's."""

    name = "nnssl"

    def __init__(self, ctx: LoadContext):
        super().__init__(ctx)
        plan = ctx.source.nnssl.plan
        stem, encoder = declared_parts(ctx.network, ctx.spec.name)
        self.map = NnsslKeyMap(plan, stem, encoder, ctx.positional_embedding, ctx.target_names,
                               ctx.options.load_decoder, ctx.head_re.pattern)

    @classmethod
    def applies(cls, source: Any) -> bool:
        return getattr(source, "nnssl", None) is not None

    def key_map(self) -> KeyMap:
        return self.map

    def dropped(self) -> set[str]:
        return set(self.map.dropped)

    def token_grid_hints(self) -> list[list[int]]:
        """The patch embedding's kernel is its stride: pretraining patch / kernel (and the recommended patch's)."""
        plan = self.map.plan
        proj = self.ctx.source.state_dict.get(f"{plan.keys_to_in_proj[0]}.weight")
        hints: list[list[int]] = []
        if proj is not None and proj.ndim == 5:
            k = list(proj.shape[2:])
            for patch in (plan.pretrain_patch, list(plan.recommended_downstream_patchsize)):
                if patch:
                    grid = [p // s for p, s in zip(patch, k, strict=True)]
                    if self.ctx.source.nnssl.token_order == "hwd":  # the embedding's rows run (h w d)
                        grid[0], grid[1] = grid[1], grid[0]
                    hints.append(grid)
        return hints

    def finish(self, records: list[TensorRecord], mapping: KeyMapping) -> list[str]:
        notes = nnssl_records(records, self.map, mapping.names.items(), self.ctx.source.state_dict)
        nnssl = self.ctx.source.nnssl
        target_order = getattr(self.ctx.network, "token_order", "whd") if self.ctx.spec.name == "Primus" else None
        if nnssl.token_order and target_order and nnssl.token_order != target_order:
            def flat(order: str) -> str:
                return f"({' '.join(order)})"

            notes.append(
                f"token order: the checkpoint's tokens were flattened {flat(nnssl.token_order)} in pretraining "
                f"(trainer {nnssl.trainer_name}), this {type(self.ctx.network).__name__} flattens them "
                f"{flat(target_order)}: its positional and rotary embeddings see the first two spatial axes swapped; "
                "the plans of `nnunet-transfer plans --from` build a network with the pretraining's order")
        return notes

    def mismatch(self) -> str | None:
        """The checkpoint's network family against the target's (e.g. a PrimusM against a ResidualEncoderUNet)."""
        nnssl = self.ctx.source.nnssl
        class_name = str(nnssl.architecture.get("network_class_name", ""))
        source_class = pydoc.locate(class_name) if class_name else None
        families = {c.__name__ for c in source_class.__mro__} if isinstance(source_class, type) else set()
        if not families or self.ctx.spec.name in families:
            return None
        arch = nnssl.plan.architecture_plans.arch_class_name.rsplit(".", 1)[-1]  # a preset (PrimusM) or a class
        return (f"the checkpoint is a {arch} (nnssl) and the target network a {type(self.ctx.network).__name__}: "
                f"make plans that build the pretrained network with `nnunet-transfer plans --from "
                f"{self.ctx.source.path} -t DATASET -tp PLANS` and fine-tune with those plans")
