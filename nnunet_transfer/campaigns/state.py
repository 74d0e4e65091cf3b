"""What is done, read from nnU-Net's own files every time (never from a list that can go stale).

A fold (:func:`train_state`):

==============  =====================================================================  ==========================
state           files in the fold folder                                               command
==============  =====================================================================  ==========================
``done``        ``checkpoint_final.pth`` and ``validation/summary.json``              none
``validate``    ``checkpoint_final.pth``, no summary (killed during the validation)    ``nnUNetv2_train ... --val``
``continue``    ``checkpoint_latest.pth`` or ``checkpoint_best.pth``, or (AdaptiveFT)  ``nnUNetv2_train ... --c``
                ``pretrained_load_report.json`` (the run began, no checkpoint yet)
``new``         none of these                                                          ``nnUNetv2_train ...``
==============  =====================================================================  ==========================

A checkpoint that is not a readable zip (torch.save killed mid-write) does not count: the executor moves it aside
(``<name>.unreadable-<timestamp>``, never deleted) before it runs the command, so that ``--c`` does not pick it.

A target's data (:func:`prepare_state`): the plans file ``$nnUNet_preprocessed/<dataset>/<plans>.json``, and per
configuration the preprocessed cases (``<data_identifier>/<case>.pkl``, written last for each case) and the ground
truth copies (``gt_segmentations``) against the cases of the raw dataset.
"""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from nnunet_transfer.core.loading.report import REPORT_FILE  # written by our trainers when a training starts
from nnunet_transfer.errors import PlansError

__all__ = [
    "CHECKPOINTS",
    "Fold",
    "PrepareState",
    "TargetData",
    "TrainState",
    "checkpoint_readable",
    "configuration_data_identifier",
    "move_aside",
    "prepare_state",
    "train_done",
    "train_state",
]

FINAL, LATEST, BEST = "checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth"
CHECKPOINTS = (FINAL, LATEST, BEST)  # nnU-Net's --c takes the first that exists, in this order
SUMMARY = Path("validation") / "summary.json"

TrainKind = Literal["done", "validate", "continue", "new"]


class Fold(Protocol):
    """What a fold's state is read from (a :class:`~nnunet_transfer.campaigns.tasks.TrainTask`)."""

    @property
    def fold_dir(self) -> Path: ...


class TargetData(Protocol):
    """What a target's prepared data is read from (a :class:`~nnunet_transfer.campaigns.tasks.PrepareTask`)."""

    @property
    def dataset(self) -> str: ...

    @property
    def plans(self) -> str: ...

    @property
    def configurations(self) -> tuple[str, ...]: ...


def checkpoint_readable(path: Path) -> bool:
    """Whether ``path`` is a readable zip archive (the format of ``torch.save``): its central directory, written
    last, is there. A file truncated by a kill mid-save is not."""
    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


@dataclass(frozen=True)
class TrainState:
    """A fold's state: ``kind`` decides the command; ``unreadable`` lists checkpoints to move aside first."""

    kind: TrainKind
    detail: str
    unreadable: tuple[Path, ...] = ()

    @property
    def flag(self) -> str | None:
        """The ``nnUNetv2_train`` flag of this state: ``--val``, ``--c`` or None (a new training)."""
        return {"validate": "--val", "continue": "--c"}.get(self.kind)


def train_done(task: Fold) -> bool:
    """Whether nnU-Net finished the fold: ``checkpoint_final.pth`` and ``validation/summary.json``."""
    return (task.fold_dir / FINAL).is_file() and (task.fold_dir / SUMMARY).is_file()


def train_state(task: Fold) -> TrainState:
    """The fold's state from its files (reads only; unreadable checkpoints are reported, not moved)."""
    d = task.fold_dir
    unreadable = tuple(d / n for n in CHECKPOINTS if (d / n).is_file() and not checkpoint_readable(d / n))
    have = [n for n in CHECKPOINTS if (d / n).is_file() and d / n not in unreadable]
    note = f"; unreadable: {', '.join(p.name for p in unreadable)}" if unreadable else ""
    if FINAL in have and (d / SUMMARY).is_file():
        return TrainState("done", f"{FINAL} and {SUMMARY.as_posix()}{note}", unreadable)
    if FINAL in have:
        return TrainState("validate", f"{FINAL} without {SUMMARY.as_posix()}: nnU-Net's validation{note}", unreadable)
    if have:
        return TrainState("continue", f"continues from {have[0]}{_epoch_note(d / have[0])}{note}", unreadable)
    if (d / REPORT_FILE).is_file():
        return TrainState("continue", f"began (no checkpoint yet; {REPORT_FILE}): restarts from the pretrained "
                                      f"weights it began with{note}", unreadable)
    return TrainState("new", "not started" if not d.is_dir() else f"no checkpoint in {d}{note}", unreadable)


def _epoch_note(checkpoint: Path) -> str:
    """`` (saved <time>)``: cheap, without unpickling the checkpoint."""
    try:
        return f" (saved {time.strftime('%Y-%m-%d %H:%M', time.localtime(checkpoint.stat().st_mtime))})"
    except OSError:
        return ""


def move_aside(paths: Iterable[Path]) -> list[Path]:
    """Rename each file to ``<name>.unreadable-<timestamp>`` beside it (never deletes); returns the new paths."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for p in paths:
        if not p.is_file():
            continue
        new = p.with_name(f"{p.name}.unreadable-{stamp}")
        n = 1
        while new.exists():
            new = p.with_name(f"{p.name}.unreadable-{stamp}-{n}")
            n += 1
        p.rename(new)
        moved.append(new)
    return moved


# --- the target's data ----------------------------------------------------------------------------------------------
def configuration_data_identifier(plans: dict[str, Any], configuration: str) -> str | None:
    """The configuration's ``data_identifier``, following ``inherits_from`` as nnU-Net's PlansManager does; None
    when the plans do not have the configuration."""
    confs = plans.get("configurations") or {}
    seen: set[str] = set()
    name: str | None = configuration
    while name is not None and name in confs and name not in seen:
        seen.add(name)
        conf = confs[name]
        if "data_identifier" in conf:
            return str(conf["data_identifier"])
        name = conf.get("inherits_from")
    return None


@dataclass(frozen=True)
class PrepareState:
    """A target's prepared data: ``plans_missing``; configurations whose preprocessed data is ``incomplete``;
    configurations the plans do not have (``absent``)."""

    plans_file: Path
    plans_missing: bool
    incomplete: tuple[str, ...]
    absent: tuple[str, ...]
    detail: str

    @property
    def ready(self) -> bool:
        return not (self.plans_missing or self.incomplete or self.absent)


def _cases(folder: Path, suffix: str) -> set[str]:
    return {p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}")} if folder.is_dir() else set()


def prepare_state(task: TargetData, preprocessed_root: Path, raw_root: Path) -> PrepareState:
    """The target's data against its raw dataset (reads only)."""
    from nnunet_transfer.nnunet.datasets import raw_case_identifiers, read_json

    folder = preprocessed_root / task.dataset
    plans_file = folder / f"{task.plans}.json"
    if not plans_file.is_file():
        return PrepareState(plans_file, True, task.configurations, (), f"no plans {plans_file}")
    try:
        plans = read_json(plans_file)
    except PlansError as e:  # broken plans: nnU-Net's preprocessing will say what is wrong with them
        return PrepareState(plans_file, False, task.configurations, (), str(e))
    cases = set(raw_case_identifiers(raw_root / task.dataset))
    file_ending = _file_ending(raw_root / task.dataset)
    gt_ok = cases <= _cases(folder / "gt_segmentations", file_ending) and (folder / "dataset.json").is_file()
    incomplete, absent, notes = [], [], []
    for conf in task.configurations:
        ident = configuration_data_identifier(plans, conf)
        if ident is None:
            absent.append(conf)
            notes.append(f"{conf}: not in the plans")
            continue
        have = cases & _cases(folder / ident, ".pkl")
        if len(have) < len(cases) or not gt_ok:
            incomplete.append(conf)
            notes.append(f"{conf}: {len(have)} of {len(cases)} cases preprocessed"
                         + ("" if gt_ok else ", ground truth copies incomplete"))
        else:
            notes.append(f"{conf}: {len(cases)} cases preprocessed")
    return PrepareState(plans_file, False, tuple(incomplete), tuple(absent), "; ".join(notes))


def _file_ending(raw: Path) -> str:
    try:
        return str(json.loads((raw / "dataset.json").read_text()).get("file_ending", ".nii.gz"))
    except (OSError, ValueError):
        return ".nii.gz"
