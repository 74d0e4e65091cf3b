"""What a plans transfer changes and what it costs, for humans: the plans diff and the voxels per case."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["costs", "diff", "short"]

_SUMMARISED = {"foreground_intensity_properties_per_channel"}


def short(value: Any, limit: int = 90) -> str:
    """``value`` as JSON, cut to ``limit`` characters."""
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def diff(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """``[(dotted path, old, new)]`` for every leaf that differs (intensity statistics summarised)."""
    if path in _SUMMARISED and old != new:
        def summary(v: Any) -> str:
            return f"<statistics of {len(v)} channel(s)>" if isinstance(v, dict) else str(v)

        return [(path, summary(old) + " (source)", summary(new) + " (target)")]
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in list(old) + [k for k in new if k not in old]:
            out.extend(diff(old.get(k, "<absent>"), new.get(k, "<absent>"), f"{path}.{k}" if path else str(k)))
        return out
    return [] if old == new else [(path, old, new)]


def costs(plans: dict[str, Any], confs: Sequence[str], shapes: np.ndarray, spacings: np.ndarray,
          own_spacing: np.ndarray, tf: list[int]) -> list[str]:
    """Per configuration: the median case in voxels at the transferred spacing vs at the target's own spacing."""
    out = []
    back = np.argsort(tf)
    for c in confs:
        conf = plans["configurations"][c]
        if len(conf["spacing"]) != 3:
            out.append(f"{c}: 2d slices at {conf['spacing']} mm in-plane")
            continue
        new_sp = np.array(conf["spacing"])[back]  # into the images' own axis order
        with_new = np.median(shapes * spacings / new_sp, 0)
        with_own = np.median(shapes * spacings / own_spacing, 0)
        ratio = float(np.prod(with_new) / np.prod(with_own))
        fmt = "x".join
        out.append(
            f"{c}: median case {fmt(str(round(float(x))) for x in with_new)} voxels at the transferred spacing "
            f"{[round(float(s), 3) for s in new_sp]} mm vs {fmt(str(round(float(x))) for x in with_own)} at the "
            f"target's own {[round(float(s), 3) for s in own_spacing]} mm: x{ratio:.2f} voxels per case"
        )
    return out
