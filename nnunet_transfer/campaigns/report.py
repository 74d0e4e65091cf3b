"""Campaign report: nnU-Net's validation Dice per dataset, configuration, arm, fold and label, summarised over folds.

The numbers are nnU-Net's own: each fold's ``validation/summary.json`` (written by ``nnUNetv2_train`` after training,
``mean`` keyed by label value or region, ``foreground_mean``). Label values and regions get their names from the
``dataset.json`` nnU-Net copies beside the fold folders. Folds without a summary are listed with what their folder
shows (trained but not validated, in progress, not started), so an unfinished campaign reports what is done.

>>> result = write_report(campaign.train_tasks, campaign.workdir / "report")  # doctest: +SKIP
>>> print(result.summary())  # doctest: +SKIP
report: 6 folds reported, 2 not done; wrote report.csv, report.md, report.png in .../report
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nnunet_transfer.core.io import atomic_path, write_text_atomic
from nnunet_transfer.errors import ReportError  # defined in errors.py; importable from here as before

__all__ = [
    "CSV_COLUMNS",
    "FoldResult",
    "LabelDice",
    "MEAN_LABEL",
    "MissingFold",
    "ReportError",
    "ReportResult",
    "ReportTask",
    "StudyOptions",
    "write_report",
]

#: ``label`` of the per-fold row that holds nnU-Net's ``foreground_mean`` (key ``foreground_mean`` in the CSV)
MEAN_LABEL = "mean"
#: columns of report.csv, in order
CSV_COLUMNS = ("dataset", "configuration", "arm", "fold", "label", "dice", "iou", "key", "summary")
BASELINE_ARM = "baseline"

_NOT_STARTED, _IN_PROGRESS, _NOT_VALIDATED, _UNREADABLE = (
    "not started", "in progress", "trained, not validated", "summary unreadable")
_EPOCH_LINE = re.compile(rb": Epoch (\d+)\s*$", re.MULTILINE)


class ReportTask(Protocol):
    """What the report reads of a task (``campaigns.spec.TrainTask`` has these and more)."""

    dataset: str
    configuration: str
    arm: str
    fold: int
    fold_dir: Path


@dataclass(frozen=True)
class LabelDice:
    """One label (or region, or the foreground mean) of one fold: nnU-Net's numbers as they are in summary.json."""

    label: str  #: name from dataset.json, the raw key if none matches, ``MEAN_LABEL`` for the foreground mean
    key: str  #: key in summary.json's ``mean`` ("1", "(1, 2)"), or ``foreground_mean``
    dice: float  #: NaN where nnU-Net wrote NaN (label absent from reference and prediction in every case)
    iou: float


@dataclass(frozen=True)
class FoldResult:
    """A fold with a validation summary."""

    dataset: str
    configuration: str
    arm: str
    fold: int
    summary: Path
    labels: tuple[LabelDice, ...]  #: labels in dataset.json order
    foreground_mean: LabelDice

    @property
    def id(self) -> str:
        return _task_id(self)


@dataclass(frozen=True)
class MissingFold:
    """A task without a (readable) validation summary, and what its fold folder shows."""

    dataset: str
    configuration: str
    arm: str
    fold: int
    fold_dir: Path
    state: str  #: "trained, not validated" | "in progress" | "not started" | "summary unreadable"
    detail: str  #: the files that tell (or the parse error)

    @property
    def id(self) -> str:
        return _task_id(self)


@dataclass(frozen=True)
class ReportResult:
    """What :func:`write_report` wrote and found."""

    out_dir: Path
    files: tuple[Path, ...]  #: report.csv, report.md, report.png
    results: tuple[FoldResult, ...]
    missing: tuple[MissingFold, ...]

    @property
    def folds_reported(self) -> int:
        return len(self.results)

    def summary(self) -> str:
        """One line for humans."""
        names = ", ".join(p.name for p in self.files)
        return (f"report: {self.folds_reported} folds reported, {len(self.missing)} not done; "
                f"wrote {names} in {self.out_dir}")


@dataclass(frozen=True)
class StudyOptions:
    """A study's report (arms, fractions): the reference arm, the bootstrap seed and the budget sentence."""

    reference: str
    seed: int = 0
    budget: str = ""
    tests: tuple[Any, ...] = ()  # the campaign's test tasks (held-out test set)


@dataclass(frozen=True)
class _AtPoint:
    """A fraction fold as the per-fold tables show it: ``arm @ point``, its base fold."""

    dataset: str
    configuration: str
    arm: str
    fold: int
    fold_dir: Path


def _at_point(task: Any) -> ReportTask:
    p = getattr(task, "point", None)
    if p is None or p.full:
        return task
    return _AtPoint(task.dataset, task.configuration, f"{task.arm} @ {p.point}", p.base_fold, task.fold_dir)


def write_report(tasks: Sequence[ReportTask], out_dir: Path, study: StudyOptions | None = None) -> ReportResult:
    """Read the validation summary of every task's fold and write ``report.csv``, ``report.md`` and ``report.png``
    into ``out_dir`` (created; each file replaced atomically; nothing is written elsewhere). A ``study`` adds
    ``cases.csv``, ``comparisons.csv``, ``learning_curve.png`` and its sections of report.md
    (:mod:`~nnunet_transfer.campaigns.study_report`); its fraction folds show as ``arm @ point``."""
    study_tasks = list(tasks)
    if study is not None:
        tasks = [_at_point(t) for t in tasks]
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot create the report folder {out_dir}: {e.strerror or e}") from e
    if not out_dir.is_dir():
        raise ReportError(f"the report folder {out_dir} is not a folder")

    results: list[FoldResult] = []
    missing: list[MissingFold] = []
    names_cache: dict[Path, dict[tuple[int, ...], str]] = {}
    seen: set[tuple[Any, ...]] = set()
    for task in tasks:
        ident = (task.dataset, task.configuration, task.arm, task.fold, Path(task.fold_dir))
        if ident in seen:
            continue
        seen.add(ident)
        outcome = _read_fold(task, names_cache)
        (results if isinstance(outcome, FoldResult) else missing).append(outcome)

    groups = _groups(tasks, results)
    markdown = _markdown(groups, results, missing)
    extra: list[Path] = []
    if study is not None:
        from nnunet_transfer.campaigns.study_report import write_study

        extra, lines = write_study(study_tasks, out_dir, study.reference, study.seed, study.budget,  # type: ignore
                                   study.tests)
        markdown += "\n" + "\n".join(lines) + "\n"
    files = (
        write_text_atomic(out_dir / "report.csv", _csv_text(groups)),
        write_text_atomic(out_dir / "report.md", markdown),
        _plot(groups, out_dir / "report.png"),
        *extra,
    )
    return ReportResult(out_dir=out_dir, files=files, results=tuple(results), missing=tuple(missing))


# --- reading ----------------------------------------------------------------------------------------------------


def _task_id(t: Any) -> str:
    return f"{t.dataset}/{t.configuration}/{t.arm}/fold_{t.fold}"


def _read_fold(task: ReportTask, names_cache: dict[Path, dict[tuple[int, ...], str]]) -> FoldResult | MissingFold:
    fold_dir = Path(task.fold_dir)
    summary = fold_dir / "validation" / "summary.json"

    def missing(state: str, detail: str) -> MissingFold:
        return MissingFold(task.dataset, task.configuration, task.arm, task.fold, fold_dir, state, detail)

    if not summary.is_file():
        return missing(*_fold_state(fold_dir))
    try:
        data = json.loads(summary.read_text())  # nnU-Net writes NaN, which json reads as float("nan")
        means = data["mean"]
        if not isinstance(means, dict):
            raise TypeError("'mean' is not a mapping")
        foreground = _label_dice(MEAN_LABEL, "foreground_mean", data["foreground_mean"])
        names = names_cache.get(fold_dir.parent)
        if names is None:
            names = names_cache[fold_dir.parent] = _label_names(fold_dir.parent / "dataset.json")
        order = list(names.values())
        labels = [_label_dice(names.get(_parse_key(k), k), k, v) for k, v in means.items()]
    except (OSError, ValueError, TypeError, KeyError) as e:
        what = f"missing key {e}" if isinstance(e, KeyError) else str(e)
        return missing(_UNREADABLE, f"validation/summary.json: {what}")
    labels.sort(key=lambda ld: (order.index(ld.label) if ld.label in order else len(order), _key_order(ld.key)))
    return FoldResult(task.dataset, task.configuration, task.arm, task.fold, summary, tuple(labels), foreground)


def _label_dice(label: str, key: str, metrics: Any) -> LabelDice:
    if not isinstance(metrics, dict):
        raise TypeError(f"{key!r} is not a mapping of metrics")
    dice, iou = metrics["Dice"], metrics.get("IoU", math.nan)
    if not isinstance(dice, (int, float)) or not isinstance(iou, (int, float)):
        raise TypeError(f"{key!r}: Dice or IoU is not a number")
    return LabelDice(label, key, float(dice), float(iou))


def _parse_key(key: str) -> tuple[int, ...] | None:
    """nnU-Net's ``key_to_label_or_region`` as a sorted tuple ("2" -> (2,), "(1, 2)" -> (1, 2)); None if not one."""
    try:
        return (int(key),)
    except ValueError:
        pass
    try:
        return tuple(sorted({int(p) for p in key.strip().strip("()").split(",") if p.strip()})) or None
    except ValueError:
        return None


def _key_order(key: str) -> tuple[int, tuple[int, ...], str]:
    parsed = _parse_key(key)
    return (0, parsed, key) if parsed is not None else (1, (), key)


def _label_names(dataset_json: Path) -> dict[tuple[int, ...], str]:
    """Label value or region (sorted tuple) -> name, in dataset.json order; empty if the file is missing or odd."""
    try:
        labels = json.loads(dataset_json.read_text())["labels"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    names: dict[tuple[int, ...], str] = {}
    if not isinstance(labels, dict):
        return names
    for name, value in labels.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            continue
        names.setdefault(tuple(sorted(set(values))), str(name))
    return names


def _fold_state(fold_dir: Path) -> tuple[str, str]:
    """Why a fold has no summary, from nnU-Net's files (nnU-Net removes checkpoint_latest.pth after the final one)."""
    if not fold_dir.is_dir():
        return _NOT_STARTED, "no fold folder"
    if (fold_dir / "checkpoint_final.pth").is_file():
        return _NOT_VALIDATED, "checkpoint_final.pth, no validation/summary.json (nnUNetv2_train ... --val validates)"
    checkpoints = [n for n in ("checkpoint_latest.pth", "checkpoint_best.pth") if (fold_dir / n).is_file()]
    logs = sorted(fold_dir.glob("training_log_*.txt"))
    if not checkpoints and not logs:
        return _NOT_STARTED, "fold folder without checkpoint or training log"
    epoch = _last_logged_epoch(logs[-1]) if logs else None
    found = ", ".join(checkpoints) if checkpoints else "training log, no checkpoint yet"
    at = f"; last logged epoch {epoch}" if epoch is not None else ""
    return _IN_PROGRESS, f"running or interrupted: {found}{at}"


def _last_logged_epoch(log: Path, tail: int = 65536) -> int | None:
    try:
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - tail))
            matches = _EPOCH_LINE.findall(f.read())
    except OSError:
        return None
    return int(matches[-1]) if matches else None


# --- grouping and statistics ------------------------------------------------------------------------------------


@dataclass
class _Group:
    """One dataset and configuration: its arms in report order and their folds."""

    dataset: str
    configuration: str
    arms: list[str]
    folds: dict[str, list[FoldResult]]  # arm -> folds sorted by fold

    @property
    def labels(self) -> list[str]:
        """Label names in the order the folds list them (union over folds)."""
        out: list[str] = []
        for arm in self.arms:
            for r in self.folds[arm]:
                out.extend(ld.label for ld in r.labels if ld.label not in out)
        return out


def _fold_sort_key(fold: Any) -> tuple[int, Any]:
    return (0, fold) if isinstance(fold, int) else (1, str(fold))


def _groups(tasks: Sequence[ReportTask], results: Sequence[FoldResult]) -> list[_Group]:
    groups: dict[tuple[str, str], _Group] = {}
    for t in tasks:
        g = groups.setdefault((t.dataset, t.configuration), _Group(t.dataset, t.configuration, [], {}))
        if t.arm not in g.arms:
            g.arms.append(t.arm)
            g.folds[t.arm] = []
    for r in results:
        groups[(r.dataset, r.configuration)].folds[r.arm].append(r)
    for g in groups.values():
        g.arms.sort(key=lambda a: a == BASELINE_ARM)  # the baseline last, the others as the tasks list them
        for folds in g.folds.values():
            folds.sort(key=lambda r: _fold_sort_key(r.fold))
    return list(groups.values())


def _value(r: FoldResult, label: str) -> float | None:
    """The fold's Dice of ``label`` (NaN as nnU-Net wrote it), None if the fold has no such label."""
    if label == MEAN_LABEL:
        return r.foreground_mean.dice
    return next((ld.dice for ld in r.labels if ld.label == label), None)


def _finite(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


def _mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _gain(arm: list[FoldResult], base: list[FoldResult], label: str) -> tuple[list[float], int] | None:
    """Per-fold differences arm - baseline over the folds both have a number for, and how many are > 0."""
    base_by_fold = {r.fold: _value(r, label) for r in base}
    diffs = []
    for r in arm:
        a, b = _value(r, label), base_by_fold.get(r.fold)
        if a is not None and b is not None and not math.isnan(a) and not math.isnan(b):
            diffs.append(a - b)
    return (diffs, sum(d > 0 for d in diffs)) if diffs else None


# --- CSV --------------------------------------------------------------------------------------------------------


def _number(x: float) -> str:
    """Full precision: ``float(text) == x`` exactly; NaN spelled as nnU-Net's summary.json spells it."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return repr(x)


def _csv_text(groups: Sequence[_Group]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for g in groups:
        for arm in g.arms:
            for r in g.folds[arm]:
                for ld in (*r.labels, r.foreground_mean):
                    writer.writerow([r.dataset, r.configuration, r.arm, r.fold, ld.label, _number(ld.dice),
                                     _number(ld.iou), ld.key, str(r.summary)])
    return buf.getvalue()


# --- Markdown ---------------------------------------------------------------------------------------------------


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _stat_cell(values: Sequence[float | None], n_folds: int) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return ""
    finite = _finite(present)
    if not finite:
        return "NaN"
    mean, sd = _mean_sd(finite)
    text = f"{mean:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")
    return text + (f" (n={len(finite)})" if len(finite) != n_folds else "")


def _gain_cells(gain: tuple[list[float], int] | None) -> tuple[str, str]:
    if gain is None:
        return "", ""
    diffs, won = gain
    mean, sd = _mean_sd(diffs)
    return f"{mean:+.3f}" + (f" ± {sd:.3f}" if sd is not None else ""), f"{won}/{len(diffs)}"


def _group_markdown(g: _Group) -> tuple[list[str], bool]:
    lines = [f"## {g.dataset} · {g.configuration}", ""]
    if not any(g.folds[a] for a in g.arms):
        return [*lines, "No fold of this dataset and configuration has a validation summary yet.", ""], False
    has_base = BASELINE_ARM in g.arms and bool(g.folds[BASELINE_ARM])
    others = [a for a in g.arms if a != BASELINE_ARM and g.folds[a]] if has_base else []
    header = ["label", *(f"{a} (n={len(g.folds[a])})" for a in g.arms)]
    for a in others:
        header += [f"gain {a} - {BASELINE_ARM}", "folds won"]
    rows, any_nan = [], False
    for label in [*g.labels, MEAN_LABEL]:
        row: list[Any] = [f"**{label}**" if label == MEAN_LABEL else label]
        for a in g.arms:
            values = [_value(r, label) for r in g.folds[a]]
            any_nan |= any(v is not None and math.isnan(v) for v in values)
            row.append(_stat_cell(values, len(g.folds[a])))
        for a in others:
            row += _gain_cells(_gain(g.folds[a], g.folds[BASELINE_ARM], label))
        rows.append(row)
    lines += _table(header, rows)
    folds = sorted({r.fold for a in g.arms for r in g.folds[a]}, key=_fold_sort_key)
    per_fold = [[f, *(_fold_cell(g.folds[a], f) for a in g.arms)] for f in folds]
    lines += ["", "Foreground mean per fold:", "", *_table(["fold", *g.arms], per_fold), ""]
    return lines, any_nan


def _fold_cell(results: Sequence[FoldResult], fold: Any) -> str:
    r = next((r for r in results if r.fold == fold), None)
    if r is None:
        return "-"
    return "NaN" if math.isnan(r.foreground_mean.dice) else f"{r.foreground_mean.dice:.3f}"


def _markdown(groups: Sequence[_Group], results: Sequence[FoldResult], missing: Sequence[MissingFold]) -> str:
    total = len(results) + len(missing)
    lines = [
        "# Campaign report",
        "",
        f"{len(results)} of {total} folds have a validation summary"
        + (f"; {len(missing)} not done (see [Not done](#not-done))." if missing else "."),
        "",
        "Dice from nnU-Net's own `validation/summary.json` of each fold (per label: nnU-Net's mean over the fold's "
        "validation cases). Cells: mean ± sample standard deviation over folds; `(n=k)` when fewer folds than the "
        f"arm's have a number. **{MEAN_LABEL}** is nnU-Net's `foreground_mean` (the mean over the labels, or "
        "regions, without background). The gain of an arm over the baseline is the mean ± sd of the per-fold "
        "differences over the folds both arms have; folds won counts the folds where the arm is strictly higher. "
        "report.csv has every number at full precision (one row per dataset, configuration, arm, fold and label, "
        f"plus a row `{MEAN_LABEL}` per fold); report.png plots each arm's per-fold foreground mean.",
        "",
    ]
    if not groups:
        lines += ["The campaign has no training tasks.", ""]
    any_nan = False
    for g in groups:
        group_lines, nan = _group_markdown(g)
        lines += group_lines
        any_nan |= nan
    if any_nan:
        lines += ["NaN: nnU-Net's Dice of a label absent from both the reference and the prediction in every "
                  "validation case of a fold (its foreground mean is then NaN too); means, sd and gains above are "
                  "over the folds with a number.", ""]
    lines += ["## Not done", ""]
    if missing:
        lines += _table(["task", "state", "detail", "fold folder"],
                        [[m.id, m.state, m.detail, m.fold_dir] for m in missing])
    else:
        lines.append("Every fold has a validation summary.")
    return "\n".join(lines) + "\n"


# --- plot -------------------------------------------------------------------------------------------------------


def _plot(groups: Sequence[_Group], path: Path) -> Path:
    """One panel per dataset and configuration: each arm's per-fold foreground-mean Dice as points (labelled with the
    fold), the mean as a line. Agg canvas without pyplot (no global backend change, no window)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(1, len(groups))
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.8 * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(groups):]:
        ax.set_axis_off()
    if not groups:
        axes[0].text(0.5, 0.5, "no training tasks", ha="center", va="center", transform=axes[0].transAxes)
    colours = [f"C{i}" for i in range(10)]
    for ax, g in zip(axes, groups, strict=False):
        lows, highs, ticks = [], [], []
        for x, arm in enumerate(g.arms):
            points = [(r.fold, r.foreground_mean.dice) for r in g.folds[arm] if not math.isnan(r.foreground_mean.dice)]
            nans = len(g.folds[arm]) - len(points)
            ticks.append(f"{arm}\n(n={len(g.folds[arm])}" + (f", {nans} NaN)" if nans else ")"))
            if not points:
                continue
            colour = colours[x % len(colours)]
            step = 0.3 / (len(points) - 1) if len(points) > 1 else 0.0
            xs = [x - 0.15 * (len(points) > 1) + step * i for i in range(len(points))]
            values = [v for _, v in points]
            ax.scatter(xs, values, color=colour, s=28, zorder=3)
            for px, (fold, v) in zip(xs, points, strict=True):
                ax.annotate(str(fold), (px, v), xytext=(4, 2), textcoords="offset points", fontsize=7, color="0.35")
            mean = statistics.fmean(values)
            ax.hlines(mean, x - 0.3, x + 0.3, color=colour, linewidth=2.5, zorder=2)
            ax.annotate(f"{mean:.3f}", (x + 0.32, mean), va="center", fontsize=8)
            lows.append(min(values))
            highs.append(max(values))
        ax.set_xticks(range(len(g.arms)))
        ax.set_xticklabels(ticks)
        ax.set_xlim(-0.6, len(g.arms) - 0.4 + 0.3)
        if lows:
            span = max(max(highs) - min(lows), 0.02)
            ax.set_ylim(max(0.0, min(lows) - 0.15 * span), min(1.0, max(highs)) + 0.15 * span)
        else:
            ax.set_ylim(0, 1)
            reported = any(g.folds[a] for a in g.arms)
            ax.text(0.5, 0.5, "foreground mean NaN in every fold\n(see report.md)" if reported
                    else "no validation summary yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{g.dataset}\n{g.configuration}", fontsize=10)
        ax.set_ylabel("validation Dice (foreground mean)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
