"""Paired per-case statistics of a study: an arm against a reference arm on the same validation cases.

Inputs are nnU-Net's own numbers: per case and label the Dice of ``summary.json``'s ``metric_per_case`` (keyed by
``(fold, case)``), per fold the label's Dice of its ``mean``. A pair counts when both arms have the case and neither
Dice is NaN (nnU-Net writes NaN for a label absent from both reference and prediction).

- mean difference (arm - reference) over the pairs, its 95% percentile bootstrap interval (resampling cases, a numpy
  generator seeded with ``seed``: the same numbers on every run);
- Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``, two-sided, zero differences dropped: its ``wilcox``
  method; NaN when every difference is zero or there is no pair);
- cases won (difference > 0) and folds won (the fold's Dice higher, over the folds both arms have a number for).
"""

from __future__ import annotations

import math
import statistics as stats
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BOOTSTRAP_SAMPLES", "Comparison", "bootstrap_ci", "compare", "label_efficiency", "mean_sd",
           "wilcoxon_p"]

#: bootstrap resamples of the per-case differences
BOOTSTRAP_SAMPLES = 10000


@dataclass(frozen=True)
class Comparison:
    """An arm against the reference on the cases both have (see the module docstring)."""

    n_cases: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    cases_won: int
    folds_won: int
    n_folds: int


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not math.isnan(x)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (NaN when none; sd NaN with one)."""
    v = [x for x in values if _finite(x)]
    if not v:
        return math.nan, math.nan
    return stats.fmean(v), (stats.stdev(v) if len(v) > 1 else math.nan)


def bootstrap_ci(diffs: Sequence[float], seed: int = 0, samples: int = BOOTSTRAP_SAMPLES,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs`` (cases resampled with replacement)."""
    import numpy as np

    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(samples, d.size))].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def wilcoxon_p(diffs: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``diffs`` (zero differences dropped); NaN when nothing is left."""
    if not any(d != 0 for d in diffs):
        return math.nan
    from scipy.stats import wilcoxon

    return float(wilcoxon(list(diffs), zero_method="wilcox", alternative="two-sided").pvalue)


def compare(arm_cases: Mapping[tuple[Any, str], float], ref_cases: Mapping[tuple[Any, str], float],
            arm_folds: Mapping[Any, float], ref_folds: Mapping[Any, float], seed: int = 0) -> Comparison | None:
    """``arm`` against ``ref``: per-case pairs keyed ``(fold, case)``, fold numbers keyed by fold. None when no case
    pairs up."""
    keys = sorted(k for k in arm_cases.keys() & ref_cases.keys()
                  if _finite(arm_cases[k]) and _finite(ref_cases[k]))
    if not keys:
        return None
    diffs = [arm_cases[k] - ref_cases[k] for k in keys]
    lo, hi = bootstrap_ci(diffs, seed)
    folds = [f for f in arm_folds.keys() & ref_folds.keys() if _finite(arm_folds[f]) and _finite(ref_folds[f])]
    return Comparison(n_cases=len(diffs), mean_diff=stats.fmean(diffs), ci_low=lo, ci_high=hi,
                      p_value=wilcoxon_p(diffs), cases_won=sum(d > 0 for d in diffs),
                      folds_won=sum(arm_folds[f] > ref_folds[f] for f in folds), n_folds=len(folds))


def label_efficiency(curve: Sequence[tuple[str, float]], target: float) -> str | None:
    """The first point of ``curve`` (``(point, mean Dice)``, smallest first) whose Dice reaches ``target``; None
    when none does or the target is NaN."""
    if not _finite(target):
        return None
    return next((p for p, v in curve if _finite(v) and v >= target), None)
