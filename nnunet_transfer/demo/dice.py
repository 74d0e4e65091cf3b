"""Validation Dice by label name: nnU-Net's ``validation/summary.json`` keyed through ``dataset.json`` labels.

nnU-Net writes the per-label means under label values (``"1"``) or, for region-based datasets, region tuples
(``"(1, 2)"``, ``"(3,)"``: ``str()`` of the tuple, see ``nnunetv2.evaluation.evaluate_predictions``).
``dataset.json`` names them: ``{"background": 0, "edema": 1, "lesion": 2}`` or, with regions,
``{"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing": 3}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from nnunet_transfer.errors import TransferError

__all__ = ["dice_by_name", "foreground_names", "format_dice", "format_dice_comparison"]

Label = int | tuple[int, ...]


def _label(value: Any) -> Label:
    return tuple(int(v) for v in value) if isinstance(value, list | tuple) else int(value)


def _key(text: str) -> Label:
    """A summary.json key as nnU-Net reads it back (``key_to_label_or_region``): ``"(1, 2)"`` -> (1, 2)."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return tuple(int(p) for p in text.strip("()").split(",") if p.strip())


def _is_background(value: Label) -> bool:
    return value == 0 if isinstance(value, int) else set(value) == {0}


def foreground_names(labels: Mapping[str, Any]) -> list[str]:
    """Label (or region) names in the order nnU-Net lists its foreground classes (pseudo Dice, network outputs).

    Labels: sorted by value. Regions (some value is a list of two or more labels): in ``dataset.json`` order.
    """
    items = [(name, _label(v)) for name, v in labels.items() if name != "ignore"]
    items = [(name, v) for name, v in items if not _is_background(v)]
    if any(isinstance(v, tuple) and len(v) > 1 for _, v in items):
        return [name for name, _ in items]

    def value(v: Label) -> int:
        return v if isinstance(v, int) else v[0]

    return [name for name, v in sorted(items, key=lambda item: value(item[1]))]


def dice_by_name(summary: Mapping[str, Any], labels: Mapping[str, Any]) -> dict[str, float]:
    """``{label name: mean Dice}`` from a parsed summary.json, in :func:`foreground_names` order; keys that no
    label names stay as ``label <key>`` (at the end)."""
    if "mean" not in summary:
        raise TransferError("validation summary has no 'mean' entry: not an nnU-Net summary.json "
                            "(nnunetv2.evaluation.evaluate_predictions writes it)")
    names: dict[Label, str] = {}
    for name, value in labels.items():
        label = _label(value)
        names.setdefault(label, name)
        if isinstance(label, tuple) and len(label) == 1:  # [3] in a label (not region) dataset is label 3
            names.setdefault(label[0], name)
    found = {names.get(_key(k), f"label {k}"): float(v["Dice"]) for k, v in summary["mean"].items()}
    # summary.json is written with sorted keys ("10" before "2"): list in nnU-Net's label order instead
    order = [n for n in foreground_names(labels) if n in found]
    return {n: found[n] for n in order + [n for n in found if n not in order]}


def _fmt(value: float, signed: bool = False) -> str:
    if math.isnan(value):
        return "nan"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def format_dice(summary: Mapping[str, Any], labels: Mapping[str, Any]) -> str:
    """``mean 0.938 (edema 0.977, lesion 0.899)``."""
    per_label = dice_by_name(summary, labels)
    mean = float(summary["foreground_mean"]["Dice"])
    return f"mean {_fmt(mean)} ({', '.join(f'{n} {_fmt(v)}' for n, v in per_label.items())})"


def format_dice_comparison(rows: Sequence[tuple[str, Mapping[str, Any]]], labels: Mapping[str, Any]) -> list[str]:
    """One aligned line per ``(title, summary)``, then the difference of the first minus the second."""
    width = max(len(title) for title, _ in rows) + 1
    lines = [f"  {title + ':':<{width}} {format_dice(summary, labels)}" for title, summary in rows]
    if len(rows) == 2:
        (_, a), (_, b) = rows
        da, db = dice_by_name(a, labels), dice_by_name(b, labels)
        mean = float(a["foreground_mean"]["Dice"]) - float(b["foreground_mean"]["Dice"])
        per = ", ".join(f"{n} {_fmt(v - db[n], signed=True)}" for n, v in da.items() if n in db)
        lines.append(f"  {'difference:':<{width}} mean {_fmt(mean, signed=True)} ({per})")
    return lines
