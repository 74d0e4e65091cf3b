"""The study part of a campaign report: per-case Dice (``cases.csv``), paired comparisons against the reference arm
(``comparisons.csv`` and a table in ``report.md``), label efficiency and the learning curve (``learning_curve.png``).

Everything comes from each fold's ``validation/summary.json``, as nnU-Net wrote it: ``metric_per_case`` for the
per-case numbers, ``mean``/``foreground_mean`` for the per-fold ones. A point of a curve is one fraction (or case
count) of every base fold; its folds validate on the base folds' cases, so every point is measured on the same cases.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nnunet_transfer.campaigns.statistics import Comparison, compare, label_efficiency, mean_sd
from nnunet_transfer.core.io import atomic_path, write_text_atomic

__all__ = ["CASES_COLUMNS", "COMPARISON_COLUMNS", "StudyTask", "read_cases", "write_study"]

#: columns of cases.csv
CASES_COLUMNS = ("dataset", "configuration", "arm", "fraction", "fold", "case", "label", "dice", "train_cases",
                 "nnunet_fold", "summary")
#: columns of comparisons.csv
COMPARISON_COLUMNS = ("dataset", "configuration", "point", "label", "arm", "reference", "arm_dice", "arm_sd",
                      "reference_dice", "reference_sd", "n_cases", "mean_diff", "ci_low", "ci_high", "p_value",
                      "cases_won", "folds_won", "n_folds")
MEAN = "mean"


class StudyTask(Protocol):
    """What the study report reads of a train task (``campaigns.tasks.TrainTask``)."""

    dataset: str
    configuration: str
    arm: str
    fold: int
    fold_dir: Path
    point: Any  # FoldPoint | None


@dataclass
class _Fold:
    """One fold's numbers: per label the fold's Dice and per case the Dice."""

    arm: str
    point: str
    order: float
    fraction: float
    base_fold: int
    fold: int
    n_train: int
    summary: Path
    fold_dice: dict[str, float]  # label -> nnU-Net's mean Dice of the fold (MEAN: foreground_mean)
    cases: dict[str, dict[str, float]] = field(default_factory=dict)  # case -> label -> Dice


def _number(x: float) -> str:
    return "NaN" if math.isnan(x) else repr(float(x))


def _case_id(path: str, ending: str | None) -> str:
    name = Path(path).name
    if ending and name.endswith(ending):
        return name[: -len(ending)]
    for e in (".nii.gz", ".nii", ".nrrd", ".mha", ".tif", ".png"):
        if name.endswith(e):
            return name[: -len(e)]
    return name


def _names(dataset_json: Path) -> tuple[dict[str, str], str | None]:
    """summary.json label key ("1", "(1, 2)") -> name, and the file ending, from dataset.json."""
    try:
        data = json.loads(dataset_json.read_text())
    except (OSError, ValueError):
        return {}, None
    names = {}
    for name, value in (data.get("labels") or {}).items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) for v in values):
            continue
        key = str(values[0]) if len(values) == 1 else str(tuple(sorted(set(values))))
        names.setdefault(key, str(name))
    return names, data.get("file_ending")


def read_cases(task: StudyTask, cache: dict[Path, tuple[dict[str, str], str | None]] | None = None) -> _Fold | None:
    """The fold's numbers from its ``validation/summary.json``; None without a readable one."""
    summary = Path(task.fold_dir) / "validation" / "summary.json"
    try:
        data = json.loads(summary.read_text())
        means, per_case = data["mean"], data["metric_per_case"]
    except (OSError, ValueError, KeyError):
        return None
    cache = {} if cache is None else cache
    model = Path(task.fold_dir).parent
    if model not in cache:
        cache[model] = _names(model / "dataset.json")
    names, ending = cache[model]
    p = task.point
    fold = _Fold(task.arm, p.point if p is not None else "1", float(p.n_train if p is not None else 1),
                 p.fraction if p is not None else 1.0, p.base_fold if p is not None else task.fold, task.fold,
                 p.n_train if p is not None else 0, summary, {})
    for key, m in means.items():
        fold.fold_dice[names.get(key, key)] = float(m["Dice"])
    fold.fold_dice[MEAN] = float(data["foreground_mean"]["Dice"])
    for entry in per_case:
        case = _case_id(entry.get("reference_file") or entry.get("prediction_file") or "?", ending)
        labels = {names.get(k, k): float(v["Dice"]) for k, v in entry["metrics"].items()}
        finite = [v for v in labels.values() if not math.isnan(v)]
        labels[MEAN] = sum(finite) / len(finite) if finite else math.nan
        fold.cases[case] = labels
    return fold


@dataclass
class _Group:
    dataset: str
    configuration: str
    arms: list[str]
    folds: list[_Fold]

    def points(self) -> list[str]:
        """Points in order of their mean training-case count."""
        by: dict[str, list[float]] = {}
        for f in self.folds:
            by.setdefault(f.point, []).append(f.order)
        return sorted(by, key=lambda p: (sum(by[p]) / len(by[p]), p))

    def labels(self) -> list[str]:
        out: list[str] = []
        for f in self.folds:
            out += [k for k in f.fold_dice if k not in out and k != MEAN]
        return [*out, MEAN]

    def of(self, arm: str, point: str) -> list[_Fold]:
        return sorted((f for f in self.folds if f.arm == arm and f.point == point), key=lambda f: f.base_fold)


def _full_point(g: _Group) -> str | None:
    return next((f.point for f in g.folds if f.fold == f.base_fold and f.fraction == 1.0), None)


def _comparisons(g: _Group, reference: str, seed: int) -> list[tuple[str, str, str, tuple[float, float],
                                                                       tuple[float, float], Comparison | None]]:
    rows = []
    for point in g.points():
        ref = g.of(reference, point)
        for label in g.labels():
            ref_stat = mean_sd([f.fold_dice.get(label, math.nan) for f in ref])
            for arm in g.arms:
                if arm == reference:
                    continue
                mine = g.of(arm, point)
                if not mine:
                    continue
                arm_stat = mean_sd([f.fold_dice.get(label, math.nan) for f in mine])
                c = compare({(f.base_fold, c): v[label] for f in mine for c, v in f.cases.items() if label in v},
                            {(f.base_fold, c): v[label] for f in ref for c, v in f.cases.items() if label in v},
                            {f.base_fold: f.fold_dice.get(label, math.nan) for f in mine},
                            {f.base_fold: f.fold_dice.get(label, math.nan) for f in ref}, seed) if ref else None
                rows.append((point, label, arm, arm_stat, ref_stat, c))
    return rows


def _fmt(x: float, spec: str = ".3f") -> str:
    return "NaN" if math.isnan(x) else format(x, spec)


def _p(x: float) -> str:
    return "-" if math.isnan(x) else (f"{x:.2g}" if x >= 0.001 else "<0.001")


def _test_rows(tests: Sequence[Any]) -> dict[tuple[str, str], list[tuple[str, str, str, float, Path]]]:
    """(dataset, configuration) -> (arm, point, label, Dice, summary) of each test task's nnUNetv2_evaluate_folder
    summary (label ``mean``: its foreground_mean)."""
    out: dict[tuple[str, str], list[tuple[str, str, str, float, Path]]] = {}
    cache: dict[Path, Any] = {}
    for t in tests:
        try:
            data = json.loads(Path(t.summary).read_text())
        except (OSError, ValueError):
            continue
        model = Path(t.out).parent
        if model not in cache:
            cache[model] = _names(model / "dataset.json")
        names = cache[model][0]
        point = t.point.point if t.point is not None else "1"
        rows = out.setdefault((t.dataset, t.configuration), [])
        rows += [(t.arm, point, names.get(k, k), float(v["Dice"]), Path(t.summary))
                 for k, v in (data.get("mean") or {}).items()]
        rows.append((t.arm, point, MEAN, float(data["foreground_mean"]["Dice"]), Path(t.summary)))
    return out


def write_study(tasks: Sequence[StudyTask], out_dir: Path, reference: str, seed: int = 0,
                budget: str = "", tests: Sequence[Any] = ()) -> tuple[list[Path], list[str]]:
    """Write ``cases.csv``, ``comparisons.csv`` and ``learning_curve.png`` (and with ``tests``, the test tasks,
    ``test.csv``) into ``out_dir``; returns them and the report.md lines of the study (per dataset and configuration:
    learning curve table, held-out test Dice, paired comparison, label efficiency)."""
    test_rows = _test_rows(tests)
    cache: dict[Path, Any] = {}
    groups: dict[tuple[str, str], _Group] = {}
    for t in tasks:
        g = groups.setdefault((t.dataset, t.configuration), _Group(t.dataset, t.configuration, [], []))
        if t.arm not in g.arms:
            g.arms.append(t.arm)
        fold = read_cases(t, cache)
        if fold is not None:
            g.folds.append(fold)
    cases = io.StringIO()
    w = csv.writer(cases, lineterminator="\n")
    w.writerow(CASES_COLUMNS)
    comp = io.StringIO()
    cw = csv.writer(comp, lineterminator="\n")
    cw.writerow(COMPARISON_COLUMNS)
    md = ["## Study", "",
          f"Reference arm: **{reference}**. Per point (fraction of each base fold's training cases) and label: each "
          "arm's Dice (mean ± sd over folds, nnU-Net's `mean` of each fold's validation summary), the per-case "
          "paired difference arm - reference over the validation cases both have (NaN Dice left out) with its 95% "
          "bootstrap interval, the Wilcoxon signed-rank p-value, cases won and folds won. Label `mean`: nnU-Net's "
          "`foreground_mean` per fold, the mean of the case's label Dice per case. " + budget, ""]
    for g in groups.values():
        for arm in g.arms:
            for point in g.points():
                for f in g.of(arm, point):
                    for case in sorted(f.cases):
                        for label, dice in f.cases[case].items():
                            if label == MEAN:
                                continue
                            w.writerow([g.dataset, g.configuration, arm, repr(f.fraction), f.base_fold, case, label,
                                        _number(dice), f.n_train, f.fold, str(f.summary)])
        md += [f"### {g.dataset} · {g.configuration} (study)", ""]
        if not g.folds:
            md += ["No fold has a validation summary yet.", ""]
            continue
        points = g.points()
        header = ["arm", *(f"{p} ({_cases(g, p)})" for p in points)]
        rows = [[arm, *(_cell(g.of(arm, p)) for p in points)] for arm in g.arms]
        md += ["Foreground mean Dice (mean ± sd over folds, n folds):", "", *_table(header, rows), ""]
        tested = {(a, p): v for a, p, label, v, _ in test_rows.get((g.dataset, g.configuration), []) if label == MEAN}
        if tested:
            md += ["Held-out test set (imagesTs/labelsTs): foreground mean Dice of each arm's fold ensemble "
                   "(nnUNetv2_predict, nnUNetv2_evaluate_folder):", "",
                   *_table(header, [[arm, *(_fmt(tested[(arm, p)]) if (arm, p) in tested else "" for p in points)]
                                    for arm in g.arms]), ""]
        comparisons = _comparisons(g, reference, seed)
        table = []
        for point, label, arm, a, r, c in comparisons:
            cw.writerow([g.dataset, g.configuration, point, label, arm, reference, _number(a[0]), _number(a[1]),
                         _number(r[0]), _number(r[1]), *(
                             [c.n_cases, _number(c.mean_diff), _number(c.ci_low), _number(c.ci_high),
                              _number(c.p_value), c.cases_won, c.folds_won, c.n_folds] if c else [0, *["NaN"] * 4,
                                                                                                   0, 0, 0])])
            table.append([point, label, arm, f"{_fmt(a[0])} ± {_fmt(a[1])}", f"{_fmt(r[0])} ± {_fmt(r[1])}",
                          *([f"{c.mean_diff:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}]", _p(c.p_value),
                             f"{c.cases_won}/{c.n_cases}", f"{c.folds_won}/{c.n_folds}"] if c else ["-"] * 4)])
        if table:
            md += [f"Paired comparison against {reference}:", "",
                   *_table(["point", "label", "arm", "arm Dice", f"{reference} Dice", "Δ per case [95% CI]", "p",
                            "cases won", "folds won"], table), ""]
        full = _full_point(g)
        if full is not None:
            target = mean_sd([f.fold_dice[MEAN] for f in g.of(reference, full)])[0]
            eff = []
            for arm in g.arms:
                curve = [(p, mean_sd([f.fold_dice[MEAN] for f in g.of(arm, p)])[0]) for p in points]
                reached = label_efficiency(curve, target)
                eff.append([arm, "not reached" if reached is None else f"{reached} ({_cases(g, reached)})"])
            md += [f"Label efficiency: the smallest point at which an arm's foreground mean Dice reaches {reference}'s "
                   f"at {full} ({_fmt(target)}):", "", *_table(["arm", "reached at"], eff), ""]
    files = [write_text_atomic(out_dir / "cases.csv", cases.getvalue()),
             write_text_atomic(out_dir / "comparisons.csv", comp.getvalue()),
             _plot(list(groups.values()), out_dir / "learning_curve.png")]
    if tests:
        buf = io.StringIO()
        tw = csv.writer(buf, lineterminator="\n")
        tw.writerow(("dataset", "configuration", "arm", "point", "label", "dice", "summary"))
        for (dataset, conf), rows_ in test_rows.items():
            tw.writerows([dataset, conf, a, p, label, _number(v), str(path)] for a, p, label, v, path in rows_)
        files.append(write_text_atomic(out_dir / "test.csv", buf.getvalue()))
    return files, md


def _cases(g: _Group, point: str) -> str:
    n = sorted({f.n_train for f in g.folds if f.point == point})
    if not n or n == [0]:
        return "all cases"
    return f"{n[0]} cases" if len(n) == 1 else f"{n[0]}-{n[-1]} cases"


def _cell(folds: Sequence[_Fold]) -> str:
    if not folds:
        return ""
    m, sd = mean_sd([f.fold_dice[MEAN] for f in folds])
    return f"{_fmt(m)}" + ("" if math.isnan(sd) else f" ± {sd:.3f}") + f" (n={len(folds)})"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]


def _plot(groups: Sequence[_Group], path: Path) -> Path:
    """One panel per dataset and configuration: foreground mean Dice against training cases, a line per arm (the
    mean over folds) and a band (± sd over folds)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(1, len(groups))
    fig = Figure(figsize=(4.6 * min(3, n), 3.6 * math.ceil(n / 3)), dpi=80, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(math.ceil(n / 3), min(3, n), squeeze=False).ravel()
    for ax in axes[len(groups):]:
        ax.set_axis_off()
    for ax, g in zip(axes, groups, strict=False):
        for i, arm in enumerate(g.arms):
            xs, ms, lo, hi = [], [], [], []
            for p in g.points():
                folds = g.of(arm, p)
                m, sd = mean_sd([f.fold_dice[MEAN] for f in folds])
                if math.isnan(m):
                    continue
                xs.append(sum(f.n_train for f in folds) / len(folds))
                ms.append(m)
                sd = 0.0 if math.isnan(sd) else sd
                lo.append(m - sd)
                hi.append(m + sd)
            if xs:
                ax.plot(xs, ms, marker="o", color=f"C{i % 10}", label=arm)
                ax.fill_between(xs, lo, hi, color=f"C{i % 10}", alpha=0.2, linewidth=0)
        ax.set_title(f"{g.dataset} · {g.configuration}", fontsize=9)
        ax.set_xlabel("training cases")
        ax.set_ylabel("validation Dice (foreground mean)")
        ax.grid(alpha=0.3)
        if g.folds:
            ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
