"""Output channels of nnU-Net segmentation heads (from a ``dataset.json`` label map) and how two heads' channels map.

A channel is named by its label (softmax heads) or region (sigmoid heads) and stands for a set of label values: a
softmax channel for value ``v`` covers ``{v}``, a region channel the values it lists. Heads of the same kind map by
name as they always did (softmax channel 0 is background whatever it is called). When regions are involved on either
side, a channel is copied only when the name *and* the label set agree ("a region is the same when its label set
is"); every other target channel keeps its fresh initialisation, and the mapping says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nnunet_transfer.core.loading.report import LabelMatch

__all__ = ["HeadChannels", "head_channels", "match_channels"]


@dataclass(frozen=True)
class HeadChannels:
    """One name per output channel; ``regions`` is True for sigmoid (region-based) heads, False for softmax.

    ``label_sets`` holds the label values each channel stands for (empty when only names are known)."""

    names: tuple[str, ...]
    regions: bool
    label_sets: tuple[frozenset[int], ...] = ()

    def kind(self) -> str:
        return "regions (sigmoid)" if self.regions else "labels (softmax)"


def _is_region(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) > 1


def _values(value: Any) -> frozenset[int]:
    return frozenset(int(v) for v in value) if isinstance(value, list | tuple) else frozenset({int(value)})


def head_channels(labels: Mapping[str, Any] | Sequence[str] | HeadChannels | None) -> HeadChannels | None:
    """Channel names as nnU-Net's ``LabelManager`` orders them.

    Label maps (``{"background": 0, "liver": 1}``): one softmax channel per distinct label value in ascending order
    (named by the first label with that value), the ``ignore`` label excluded. Region maps (some values are lists):
    one sigmoid channel per foreground region in ``dataset.json`` order. A plain sequence of names is taken as given
    (softmax, label sets unknown). ``tests/unit/test_heads_contract.py`` checks this against nnU-Net's LabelManager.
    """
    if labels is None or isinstance(labels, HeadChannels):
        return labels
    if isinstance(labels, Mapping):
        if "labels" in labels and isinstance(labels["labels"], Mapping):  # a whole dataset.json
            labels = labels["labels"]
        items = [(str(k), v) for k, v in labels.items() if k != "ignore"]
        if any(_is_region(v) for _, v in items):
            regions = [(k, _values(v)) for k, v in items if _values(v) != {0}]
            return HeadChannels(tuple(k for k, _ in regions), True, tuple(s for _, s in regions))
        by_value: dict[int, str] = {}  # LabelManager: one channel per distinct value; the first name keeps it
        for k, v in items:
            by_value.setdefault(int(v[0] if isinstance(v, list | tuple) else v), k)
        order = sorted(by_value)
        return HeadChannels(tuple(by_value[v] for v in order), False, tuple(frozenset({v}) for v in order))
    return HeadChannels(tuple(str(n) for n in labels), False)


def _fmt(values: frozenset[int]) -> str:
    return "{" + ", ".join(map(str, sorted(values))) + "}"


def match_channels(source: HeadChannels, target: HeadChannels) -> list[LabelMatch]:
    """For each target channel, the source channel it is copied from (``source_index`` None: fresh init, ``note``
    says why).

    Softmax to softmax: by name (case and surrounding blanks ignored); target channel 0 (background) takes source
    channel 0 whatever the names. As soon as one side is region-based: by name, and only when both channels stand
    for the same label set (known on both sides).

    >>> src = head_channels({"background": 0, "outer": 1, "middle": 2, "inner": 3})
    >>> tgt = head_channels({"background": 0, "whole": [1, 2, 3], "core": [2, 3], "inner": [3]})
    >>> [(m.target_name, m.source_name) for m in match_channels(src, tgt)]
    [('whole', None), ('core', None), ('inner', 'inner')]
    """
    lookup: dict[str, int] = {}
    for i, n in enumerate(source.names):
        lookup.setdefault(n.strip().lower(), i)
    by_set = not (source.regions is False and target.regions is False)
    matches = []
    for j, name in enumerate(target.names):
        i = lookup.get(name.strip().lower())
        note = None
        if not by_set:
            if i is None and j == 0:
                i, note = 0, "background (softmax channel 0)"
            elif i is None:
                note = f"no source channel named {name!r}"
        elif i is None:
            note = f"no source channel named {name!r}"
        elif not source.label_sets or not target.label_sets:
            i, note = None, "label sets unknown on one side; regions are matched by name and label set"
        elif source.label_sets[i] != target.label_sets[j]:
            note = (f"{name!r} stands for labels {_fmt(target.label_sets[j])} here but {_fmt(source.label_sets[i])} "
                    "in the source")
            i = None
        else:
            note = f"same name, labels {_fmt(target.label_sets[j])}"
        matches.append(LabelMatch(j, name, i, None if i is None else source.names[i], note))
    return matches
