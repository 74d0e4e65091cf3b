"""The structured load report: one record per target tensor, the coverage figure and a human-readable table.

Every tensor record carries a machine-readable ``code`` (:class:`ReasonCode`) beside its sentence ``reason``:

=========================  ========  =========================================================================
code                       status    meaning
=========================  ========  =========================================================================
exact                      loaded    same name and shape
input_channels             adapted   first convolution adapted to another input-channel count
kernel                     adapted   convolution kernel resized (sum along each axis kept)
transposed_kernel          adapted   transposed-convolution kernel resized (taps averaged / repeated)
head_same_labels           loaded    segmentation head, same labels in the same order
head_same_shape            loaded    segmentation head, same shape, no label names on either side to compare
head_mapped                adapted   segmentation head, output channels copied by label name (regions: name and
                                     label set)
head_off                   skipped   segmentation head, ``map_heads`` is off
head_no_shared_labels      skipped   segmentation head, no label name in common
head_labels_unknown        skipped   segmentation head, the labels of the checkpoint or of the target unknown
head_kind_differs          skipped   segmentation head, labels on one side, regions on the other, no channel in common
head_shape_differs         skipped   segmentation head, its input (non-output) dimensions differ
head_label_count           skipped   segmentation head, label count differs from the head's output channels
width_mismatch             skipped   channel widths differ (not adaptable)
ndim_mismatch              skipped   number of dimensions differs (e.g. 2d vs 3d)
input_channels_off         skipped   input channels differ and ``adapt_input_channels`` is off
kernel_adapt_off           skipped   kernel size differs and ``adapt_kernels`` is off
non_integer_factor         skipped   transposed kernel differs by a non-integer factor
nonfinite                  skipped   NaN/Inf in the checkpoint tensor (the load is refused as a whole)
missing                    missing   no tensor of this name in the checkpoint
pos_embed                  adapted   positional embedding resampled (trilinear) to the target's token grid
pos_embed_grid             skipped   positional embedding: the token grid of one side cannot be inferred
pretraining_decoder        skipped   nnssl: decoder/head of the pretraining network, in the checkpoint but not
                                     transferred (fresh); ``missing`` when the checkpoint has no such tensor
new_stage                  missing   nnssl: the target's encoder has more stages than the checkpoint's (fresh)
new_block                  missing   nnssl: the target's stage has more blocks than the checkpoint's (fresh)
adapter                    new       a LoRA adapter tensor of the target (not pretrained; never in the coverage)
=========================  ========  =========================================================================

``code`` is one string. An adapted tensor that went through two adaptations joins their codes with ``+`` in the
order they were applied (``input_channels+kernel``); :attr:`TensorRecord.codes` splits it.

A record with ``in_coverage`` false does not count towards :attr:`LoadReport.coverage` (for an nnssl checkpoint only
what its adaptation plan declares transferable counts: stem, encoder, positional embedding).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from nnunet_transfer.core.io import write_json_atomic

__all__ = ["REASON_TEXT", "REPORT_FILE", "GroupRecord", "LabelMatch", "LoadReport", "ReasonCode", "Status",
           "TensorRecord"]

#: the file a training writes its load report to, in the fold folder
REPORT_FILE = "pretrained_load_report.json"

Status = Literal["loaded", "adapted", "skipped", "missing", "new"]


class ReasonCode(str, Enum):
    """Why a tensor was loaded, adapted, skipped or missing (see the table in this module's docstring)."""

    EXACT = "exact"
    INPUT_CHANNELS = "input_channels"
    KERNEL = "kernel"
    TRANSPOSED_KERNEL = "transposed_kernel"
    HEAD_SAME_LABELS = "head_same_labels"
    HEAD_SAME_SHAPE = "head_same_shape"
    HEAD_MAPPED = "head_mapped"
    HEAD_OFF = "head_off"
    HEAD_NO_SHARED_LABELS = "head_no_shared_labels"
    HEAD_LABELS_UNKNOWN = "head_labels_unknown"
    HEAD_KIND_DIFFERS = "head_kind_differs"
    HEAD_SHAPE_DIFFERS = "head_shape_differs"
    HEAD_LABEL_COUNT = "head_label_count"
    WIDTH_MISMATCH = "width_mismatch"
    NDIM_MISMATCH = "ndim_mismatch"
    INPUT_CHANNELS_OFF = "input_channels_off"
    KERNEL_ADAPT_OFF = "kernel_adapt_off"
    NON_INTEGER_FACTOR = "non_integer_factor"
    NONFINITE = "nonfinite"
    MISSING = "missing"
    POS_EMBED = "pos_embed"
    POS_EMBED_GRID = "pos_embed_grid"
    PRETRAINING_DECODER = "pretraining_decoder"
    NEW_STAGE = "new_stage"
    NEW_BLOCK = "new_block"
    ADAPTER = "adapter"

    def __str__(self) -> str:
        return self.value


# short human text per code, for LoadReport.main_reasons() and the guard's error message
REASON_TEXT: dict[str, str] = {
    "exact": "same shape",
    "input_channels": "input channels adapted",
    "kernel": "kernel size adapted",
    "transposed_kernel": "transposed kernel size adapted",
    "head_same_labels": "head with the same labels",
    "head_same_shape": "head of the same shape, no label names",
    "head_mapped": "head channels copied by label name",
    "head_off": "head mapping is off",
    "head_no_shared_labels": "head without shared label names",
    "head_labels_unknown": "head label names unknown",
    "head_kind_differs": "head labels vs regions",
    "head_shape_differs": "head input shape differs",
    "head_label_count": "head label count differs from its channels",
    "width_mismatch": "channel widths differ",
    "ndim_mismatch": "dimensionality differs",
    "input_channels_off": "input channels differ and their adaptation is off",
    "kernel_adapt_off": "kernel size differs and kernel adaptation is off",
    "non_integer_factor": "kernel size differs by a non-integer factor",
    "nonfinite": "NaN/Inf values",
    "missing": "missing from the checkpoint",
    "pos_embed": "positional embedding resampled",
    "pos_embed_grid": "positional embedding grid unknown",
    "pretraining_decoder": "pretraining decoder/head, not transferred",
    "new_stage": "encoder stage the checkpoint does not have",
    "new_block": "encoder block the checkpoint does not have",
    "adapter": "LoRA adapter, new",
}


@dataclass
class TensorRecord:
    """What happened to one tensor of the target network (aliases of the same tensor share one record)."""

    key: str
    status: Status
    code: str  # machine-readable reason: a ReasonCode value, or several joined by "+" (input_channels+kernel)
    reason: str  # the same for humans, with shapes
    source_key: str | None
    source_shape: list[int] | None
    target_shape: list[int]
    numel: int
    is_parameter: bool = True
    is_head: bool = False
    aliases: list[str] = field(default_factory=list)
    in_coverage: bool = True  # counts towards LoadReport.coverage (heads never count)

    @property
    def codes(self) -> tuple[str, ...]:
        """:attr:`code` split into its parts (one part unless several adaptations were applied)."""
        return tuple(self.code.split("+"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LabelMatch:
    """One output channel of the target's segmentation heads and the source channel it was copied from."""

    target_index: int
    target_name: str
    source_index: int | None
    source_name: str | None
    note: str | None = None  # why a channel stays fresh (or what matched), e.g. a region with another label set


@dataclass
class GroupRecord:
    """One parameter group of the target network: how many tensors and elements it holds, how many came pretrained."""

    name: str
    tensors: int
    parameters: int
    pretrained: int  # elements loaded or adapted

    @property
    def coverage(self) -> float:
        return self.pretrained / self.parameters if self.parameters else 0.0


@dataclass
class LoadReport:
    """Everything :func:`nnunet_transfer.load_pretrained` decided, with reasons. ``to_dict()`` is the JSON form."""

    checkpoint: str
    format: str
    container: str
    key_rules: str
    tensors: list[TensorRecord]
    unused_source_keys: list[str]
    min_coverage: float
    label_mapping: list[LabelMatch] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    applied: bool = False
    groups: list[GroupRecord] = field(default_factory=list)
    # what the checkpoint is against what the target is, and what to do, when the two are of different families
    # (set by the checkpoint's format; said first when the guard refuses the load)
    mismatch: str | None = None

    def attach_groups(self, groups: Sequence[Any]) -> None:
        """Fill :attr:`groups` from parameter groups (objects with ``name`` and parameter ``names``, e.g.
        :class:`nnunet_transfer.groups.ParameterGroup`), counting each tensor once whichever alias it is known by."""
        record_of = {k: r for r in self.tensors for k in (r.key, *r.aliases)}
        self.groups = []
        for g in groups:
            names = (*g.names, *getattr(g, "fixed_names", ()))  # a LoRA group's fixed pretrained weights too
            records = {id(rec): rec for n in names if (rec := record_of.get(n)) is not None}.values()
            self.groups.append(GroupRecord(
                g.name, len(records), sum(r.numel for r in records),
                sum(r.numel for r in records if r.status in ("loaded", "adapted"))))

    @property
    def coverage(self) -> float:
        """Fraction of target parameter elements (heads and records not ``in_coverage`` excluded, each tensor once)
        loaded or adapted."""
        counted = [r for r in self.tensors if r.is_parameter and not r.is_head and r.in_coverage]
        total = sum(r.numel for r in counted)
        done = sum(r.numel for r in counted if r.status in ("loaded", "adapted"))
        return done / total if total else 0.0

    @property
    def passed(self) -> bool:
        return self.coverage >= self.min_coverage

    def counts(self) -> dict[str, int]:
        c = dict.fromkeys(("loaded", "adapted", "skipped", "missing"), 0)
        for r in self.tensors:
            c[r.status] = c.get(r.status, 0) + 1  # "new" (adapters) only where there are some
        return c

    def main_reasons(self, n: int = 3) -> list[str]:
        """The reason codes that cost most coverage, each as text with its code, the number of tensors and the share
        of parameter elements it left out, and an example key (see :meth:`lost_by_code` for the figures)."""
        total = sum(r.numel for r in self.tensors if r.is_parameter and not r.is_head and r.in_coverage) or 1
        ranked = sorted(self.lost_by_code().items(), key=lambda kv: -kv[1][0])[:n]
        return [f"{REASON_TEXT.get(code, code)} [{code}] ({cnt} tensors, {num / total:.0%} of parameters, e.g. {ex})"
                for code, (num, cnt, ex) in ranked]

    def lost_by_code(self) -> dict[str, tuple[int, int, str]]:
        """``{code: (parameter elements, tensors, first key)}`` of the parameters (heads excluded) not loaded."""
        lost: dict[str, list] = defaultdict(lambda: [0, 0, ""])
        for r in self.tensors:
            if r.is_parameter and not r.is_head and r.in_coverage and r.status in ("skipped", "missing"):
                entry = lost[r.code]
                entry[0] += r.numel
                entry[1] += 1
                entry[2] = entry[2] or r.key
        return {code: (num, cnt, ex) for code, (num, cnt, ex) in lost.items()}

    def summary(self) -> str:
        """One line for humans."""
        c = self.counts()
        verdict = "ok" if self.passed else f"BELOW the minimum {self.min_coverage:.2f}"
        return (
            f"pretrained load from {self.checkpoint}: coverage {self.coverage:.3f} ({verdict}); "
            f"{c['loaded']} loaded, {c['adapted']} adapted, {c['skipped']} skipped, {c['missing']} missing, "
            f"{len(self.unused_source_keys)} unused source keys"
            + (f"; {c['new']} new adapter tensors" if c.get("new") else "")
        )

    def table(self) -> str:
        """A fixed-width table of every tensor, then the label mapping and the summary line."""
        rows = [("status", "target key", "target shape", "source shape", "reason")]
        for r in self.tensors:
            rows.append(
                (
                    r.status,
                    r.key + (" [head]" if r.is_head else ""),
                    "x".join(map(str, r.target_shape)) or "scalar",
                    "x".join(map(str, r.source_shape)) if r.source_shape is not None else "-",
                    r.reason,
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4] for row in rows]
        if self.key_rules:
            lines.append(f"key rules: {self.key_rules}")
        if self.label_mapping:
            pairs = ", ".join(
                f"{m.target_index}:{m.target_name}<-"
                + ("new" + (f" ({m.note})" if m.note else "") if m.source_index is None
                   else f"{m.source_index}:{m.source_name}")
                for m in self.label_mapping
            )
            lines.append(f"label mapping (target<-source): {pairs}")
        if self.unused_source_keys:
            shown = ", ".join(self.unused_source_keys[:10])
            more = len(self.unused_source_keys) - 10
            lines.append(f"unused source keys: {shown}{f' (+{more} more)' if more > 0 else ''}")
        if self.groups:
            lines.append("parameter groups: " + ", ".join(
                f"{g.name} {g.tensors} tensors / {g.parameters} parameters ({g.coverage:.0%} pretrained)"
                for g in self.groups))
        lines.extend(f"note: {n}" for n in self.notes)
        lines.append(self.summary())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "format": self.format,
            "container": self.container,
            "key_rules": self.key_rules,
            "coverage": self.coverage,
            "min_coverage": self.min_coverage,
            "passed": self.passed,
            "applied": self.applied,
            "counts": self.counts(),
            "tensors": [r.to_dict() for r in self.tensors],
            "unused_source_keys": list(self.unused_source_keys),
            "label_mapping": [asdict(m) for m in self.label_mapping],
            "notes": list(self.notes),
            "groups": [{**asdict(g), "coverage": g.coverage} for g in self.groups],
            "mismatch": self.mismatch,
            "summary": self.summary(),
        }

    def write_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as JSON atomically (never leaves a half-written file)."""
        return write_json_atomic(path, self.to_dict())
