"""Names of the output channels of nnU-Net segmentation heads, from a ``dataset.json`` label map."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["HeadChannels", "head_channels"]


@dataclass(frozen=True)
class HeadChannels:
    """One name per output channel; ``regions`` is True for sigmoid (region-based) heads, False for softmax."""

    names: tuple[str, ...]
    regions: bool


def _is_region(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) > 1


def head_channels(labels: Mapping[str, Any] | Sequence[str] | HeadChannels | None) -> HeadChannels | None:
    """Channel names as nnU-Net's ``LabelManager`` orders them.

    Label maps (``{"background": 0, "liver": 1}``): one softmax channel per label value in ascending order, the
    ``ignore`` label excluded. Region maps (some values are lists): one sigmoid channel per foreground region in
    ``dataset.json`` order. A plain sequence of names is taken as given (softmax).
    """
    if labels is None or isinstance(labels, HeadChannels):
        return labels
    if isinstance(labels, Mapping):
        if "labels" in labels and isinstance(labels["labels"], Mapping):  # a whole dataset.json
            labels = labels["labels"]
        items = [(str(k), v) for k, v in labels.items() if k != "ignore"]
        if any(_is_region(v) for _, v in items):
            def is_background(v: Any) -> bool:
                values = set(v) if isinstance(v, list | tuple) else {v}
                return values == {0}

            return HeadChannels(tuple(k for k, v in items if not is_background(v)), True)
        ordered = sorted(items, key=lambda kv: int(kv[1][0] if isinstance(kv[1], list | tuple) else kv[1]))
        return HeadChannels(tuple(k for k, _ in ordered), False)
    return HeadChannels(tuple(str(n) for n in labels), False)
