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

    Label maps (``{"background": 0, "liver": 1}``): one softmax channel per distinct label value in ascending order
    (named by the first label with that value), the ``ignore`` label excluded. Region maps (some values are lists):
    one sigmoid channel per foreground region in ``dataset.json`` order. A plain sequence of names is taken as given
    (softmax). ``tests/unit/test_heads_contract.py`` checks this against nnU-Net's LabelManager.
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
        by_value: dict[int, str] = {}  # LabelManager: one channel per distinct value; the first name keeps it
        for k, v in items:
            by_value.setdefault(int(v[0] if isinstance(v, list | tuple) else v), k)
        return HeadChannels(tuple(by_value[value] for value in sorted(by_value)), False)
    return HeadChannels(tuple(str(n) for n in labels), False)
