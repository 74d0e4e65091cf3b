"""The structured load report: one record per target tensor, the coverage figure and a human-readable table."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from nnunet_transfer.core.io import write_json_atomic

__all__ = ["GroupRecord", "LabelMatch", "LoadReport", "Status", "TensorRecord"]

Status = Literal["loaded", "adapted", "skipped", "missing"]


@dataclass
class TensorRecord:
    """What happened to one tensor of the target network (aliases of the same tensor share one record)."""

    key: str
    status: Status
    reason: str
    source_key: str | None
    source_shape: list[int] | None
    target_shape: list[int]
    numel: int
    is_parameter: bool = True
    is_head: bool = False
    aliases: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LabelMatch:
    """One output channel of the target's segmentation heads and the source channel it was copied from."""

    target_index: int
    target_name: str
    source_index: int | None
    source_name: str | None


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

    def attach_groups(self, groups: Sequence[Any]) -> None:
        """Fill :attr:`groups` from parameter groups (objects with ``name`` and parameter ``names``, e.g.
        :class:`nnunet_transfer.groups.ParameterGroup`), counting each tensor once whichever alias it is known by."""
        record_of = {k: r for r in self.tensors for k in (r.key, *r.aliases)}
        self.groups = []
        for g in groups:
            records = {id(rec): rec for n in g.names if (rec := record_of.get(n)) is not None}.values()
            self.groups.append(GroupRecord(
                g.name, len(records), sum(r.numel for r in records),
                sum(r.numel for r in records if r.status in ("loaded", "adapted"))))

    @property
    def coverage(self) -> float:
        """Fraction of target parameter elements (heads excluded, each tensor once) loaded or adapted."""
        total = sum(r.numel for r in self.tensors if r.is_parameter and not r.is_head)
        done = sum(
            r.numel for r in self.tensors if r.is_parameter and not r.is_head and r.status in ("loaded", "adapted")
        )
        return done / total if total else 0.0

    @property
    def passed(self) -> bool:
        return self.coverage >= self.min_coverage

    def counts(self) -> dict[str, int]:
        c = dict.fromkeys(("loaded", "adapted", "skipped", "missing"), 0)
        for r in self.tensors:
            c[r.status] += 1
        return c

    def main_reasons(self, n: int = 3) -> list[str]:
        """The reasons that cost most coverage, with the share of parameter elements each one left out."""
        total = sum(r.numel for r in self.tensors if r.is_parameter and not r.is_head) or 1
        lost: dict[str, list] = defaultdict(lambda: [0, 0, ""])
        for r in self.tensors:
            if r.is_parameter and not r.is_head and r.status in ("skipped", "missing"):
                category = r.reason.split(":")[0]
                lost[category][0] += r.numel
                lost[category][1] += 1
                lost[category][2] = lost[category][2] or r.key
        ranked = sorted(lost.items(), key=lambda kv: -kv[1][0])[:n]
        return [f"{cat} ({cnt} tensors, {num / total:.0%} of parameters, e.g. {ex})" for cat, (num, cnt, ex) in ranked]

    def summary(self) -> str:
        """One line for humans."""
        c = self.counts()
        verdict = "ok" if self.passed else f"BELOW the minimum {self.min_coverage:.2f}"
        return (
            f"pretrained load from {self.checkpoint}: coverage {self.coverage:.3f} ({verdict}); "
            f"{c['loaded']} loaded, {c['adapted']} adapted, {c['skipped']} skipped, {c['missing']} missing, "
            f"{len(self.unused_source_keys)} unused source keys"
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
                + ("new" if m.source_index is None else f"{m.source_index}:{m.source_name}")
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
            "summary": self.summary(),
        }

    def write_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as JSON atomically (never leaves a half-written file)."""
        return write_json_atomic(path, self.to_dict())
