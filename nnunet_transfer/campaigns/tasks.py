"""A campaign's tasks and their graph, built once from the campaign file and consumed by every executor.

Per target and plans one :class:`PrepareTask`; per target x configuration x arm x fold one :class:`TrainTask` that
needs it; with ``find_best`` per target one :class:`FindBestTask` that needs the target's folds. :class:`TaskGraph`
holds them in the order a local run takes them (each target's prepare, its folds, its find-best) with each task's
dependencies; every executor walks the same graph (the local one in that order, SLURM as jobs that depend on their
needs' jobs).

Each task kind answers for itself: what it needs (:attr:`Task.needs`), whether it is done (:meth:`Task.done`, read
from nnU-Net's files every time, never stored), what a run of it does (:meth:`Task.run`, through the :class:`Step`
that runs it: lock, log, failure record) and how status shows it (:meth:`Task.view`). A new kind is one class here.
"""

from __future__ import annotations

import re
import shlex
import signal
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from nnunet_transfer.campaigns.state import (
    PrepareState,
    TrainState,
    move_aside,
    prepare_state,
    train_done,
    train_state,
)
from nnunet_transfer.core.commands import console_script
from nnunet_transfer.core.preemption import PREEMPTED_EXIT_CODE
from nnunet_transfer.core.schedules.recipes import RECIPE_ENV_VAR

__all__ = [
    "ARMS",
    "OWN_PLANS",
    "Arm",
    "ArmDef",
    "FoldPoint",
    "FindBestTask",
    "PlansMode",
    "PrepareTask",
    "Status",
    "Step",
    "Target",
    "Task",
    "TaskFailure",
    "TaskGraph",
    "TaskView",
    "TestTask",
    "TrainTask",
    "build_graph",
    "shown_command",
    "task_slug",
]

#: an arm's name: ``finetune``/``baseline`` in a campaign file with ``trainer``/``baseline``, any name under ``arms``
Arm = str
PlansMode = Literal["own", "transfer"]
Status = Literal["done", "skipped", "failed", "preempted", "busy", "blocked"]
ARMS: tuple[Arm, ...] = ("finetune", "baseline")  # the arms of a campaign file without ``arms:``
OWN_PLANS = "nnUNetPlans"
T = TypeVar("T", bound="Task")


def task_slug(task_id: str) -> str:
    """A task id as a file name (``Dataset902_TwoCh/3d_fullres/finetune/fold_0`` ->
    ``Dataset902_TwoCh.3d_fullres.finetune.fold_0``): its log, lock and failure record are named after it."""
    return task_id.replace("/", ".")


@dataclass(frozen=True)
class ArmDef:
    """One arm, resolved: its trainer, its plans identifier's suffix (None: the target's plans; else the arm's own
    plans ``<plans>_<suffix>``, a copy of the target's with the arm's recipe in it), its recipe (the value of
    ``NNUNET_TRANSFER_RECIPE``, for files without ``arms:``; or the recipe written into its plans, as JSON text) and
    its pretrained checkpoint (None: from scratch)."""

    name: Arm
    trainer: str
    pretrained: Path | None = None
    recipe_env: str | None = None
    plans_suffix: str | None = None
    plans_recipe: str | None = None  # JSON of the recipe the arm's plans carry (with plans_suffix)
    recipe_arg: str | None = None  # the recipe as the campaign file names it (for the compatibility check)

    def plans(self, target_plans: str) -> str:
        """The plans identifier of this arm on a target planned as ``target_plans``."""
        return target_plans if self.plans_suffix is None else f"{target_plans}_{self.plans_suffix}"


@dataclass(frozen=True)
class FoldPoint:
    """One point of a learning curve on one base fold: nnU-Net fold ``fold`` trains ``n_train`` of base fold
    ``base_fold``'s training cases (``fold == base_fold`` at fraction 1) and validates on the base fold's cases.
    ``point`` names it in task ids and reports (``"0.25"``, ``"10 cases"``, ``"1"``)."""

    base_fold: int
    fold: int
    fraction: float
    n_train: int
    point: str = "1"
    seed: int = 0

    @property
    def full(self) -> bool:
        return self.fold == self.base_fold


@dataclass(frozen=True)
class Target:
    """One ``targets`` entry of a campaign file, resolved: the dataset's full name and what applies to it."""

    dataset: str  # DatasetXXX_Name
    dataset_id: int
    mode: PlansMode
    plans: str  # plans identifier
    configurations: tuple[str, ...]
    folds: tuple[int, ...]
    #: with ``fractions``/``train_cases``: per base fold every point (the full fold included); empty: the folds as
    #: they are
    points: tuple[FoldPoint, ...] = ()

    def fold_points(self) -> tuple[FoldPoint, ...]:
        """The folds to train: the points, or each fold at fraction 1."""
        return self.points or tuple(FoldPoint(f, f, 1.0, 0) for f in self.folds)


@dataclass(frozen=True)
class TaskView:
    """A task as ``campaign status`` and ``--dry-run`` show it: ``state``, ``detail`` and the command(s) a run would
    start now (empty when none)."""

    task: Task
    state: str
    detail: str
    commands: tuple[str, ...] = ()


class TaskFailure(Exception):
    """A step of a task failed: raised by :meth:`Task.run`, turned into the task's failure record by its runner."""

    def __init__(self, message: str, command: Sequence[str] | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.command = command
        self.exit_code = exit_code


class Step(Protocol):
    """What a task's :meth:`Task.run` gets from whoever runs it (:class:`~nnunet_transfer.campaigns.execute.
    TaskExecution`, with the task's lock held): its graph, the environment and device for its commands, a way to run
    a command into the task's log, and the failure records of the tasks it needs."""

    @property
    def graph(self) -> TaskGraph: ...

    @property
    def device(self) -> str: ...

    @property
    def interrupted(self) -> bool: ...

    def env(self) -> dict[str, str]: ...

    def command(self, cmd: list[str], env: Mapping[str, str]) -> tuple[int, str]: ...

    def say(self, line: str) -> None: ...

    def note(self, text: str) -> None: ...

    def failed_need(self) -> tuple[Task, dict[str, Any]] | None: ...


class Task(ABC):
    """One unit of a campaign: a frozen value (what to do, where nnU-Net keeps the result) that answers for itself.

    Class attributes: ``kind`` (its failure records' ``kind``), ``noun`` (how counts name it: ``2 prepare``),
    ``waits_for_lock`` (a second run waits for it rather than skip it as busy), ``serves_dependents`` (it exists for
    the tasks that need it: done when they are; an executor need not start it for tasks started elsewhere),
    ``timed`` (its times make the estimate of what is left), ``interruptible`` (its command saves a checkpoint and
    stops on SIGUSR1)."""

    kind: ClassVar[str]
    noun: ClassVar[str]
    waits_for_lock: ClassVar[bool] = False
    serves_dependents: ClassVar[bool] = False
    timed: ClassVar[bool] = False
    interruptible: ClassVar[bool] = False

    id: str
    dataset: str
    dataset_id: int

    @property
    def slug(self) -> str:
        """The id as a file name (see :func:`task_slug`)."""
        return task_slug(self.id)

    @property
    @abstractmethod
    def label(self) -> str:
        """How progress lines name the task."""

    @property
    def needs(self) -> tuple[str, ...]:
        """Ids of the tasks that must end before this one starts (they come earlier in the graph)."""
        return ()

    @abstractmethod
    def done(self, graph: TaskGraph) -> bool:
        """Whether there is nothing left to do, from nnU-Net's files."""

    @abstractmethod
    def run(self, step: Step) -> tuple[Status, str]:
        """Do what is left (its lock held); returns the status (``done``, ``skipped``, ``blocked``, ``preempted``)
        and one line; raises :class:`TaskFailure` when a step fails."""

    @abstractmethod
    def view(self, graph: TaskGraph, env: Mapping[str, str], device: str) -> TaskView:
        """Its state from the files (done, or what is left and the commands that would do it); reads only. The
        runner's states (running, failed, blocked) are added by :func:`~nnunet_transfer.campaigns.execute.
        describe_task`."""


def shown_command(cmd: Sequence[str], env: Mapping[str, str], names: Iterable[str] = ()) -> str:
    """The command as a shell line, with ``names`` (and the recipe variable, when set) from ``env`` in front."""
    keys = [*names, *([RECIPE_ENV_VAR] if env.get(RECIPE_ENV_VAR) else [])]
    return " ".join([*(f"{k}={shlex.quote(env[k])}" for k in dict.fromkeys(keys) if k in env), shlex.join(cmd)])


def _num_processes(env: Mapping[str, str]) -> str | None:
    value = env.get("nnUNet_def_n_proc")
    return value if value and value.isdigit() else None


_ERROR_LINE = re.compile(r"^(FAIL\b|nnunet-transfer \w+: error:|[\w.]*(Error|Exception|Exit)\b.*:|RuntimeError|"
                         r"AssertionError)")


def _error_line(text: str) -> str:
    """The line of a command's output that says what went wrong: the last exception or ``FAIL`` line, else the last
    non-empty line (at most 400 characters)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    found = [ln for ln in lines if _ERROR_LINE.match(ln)]
    line = found[-1] if found else (lines[-1] if lines else "no output")
    return line if len(line) <= 400 else line[:397] + "..."


def _roots() -> Any:
    from nnunet_transfer.nnunet.datasets import NnUNetRoots

    roots = NnUNetRoots.resolve()
    roots.require("raw")
    roots.require("preprocessed")
    return roots


def _newer_than_its_folds(result: Path, task: Task, graph: TaskGraph) -> bool:
    """``result`` is there and newer than the ``checkpoint_final.pth`` of every fold ``task`` needs."""
    if not result.is_file():
        return False
    folds = [t.fold_dir / "checkpoint_final.pth" for t in graph.needs(task, TrainTask)]
    newest = max((f.stat().st_mtime for f in folds if f.is_file()), default=0.0)
    return result.stat().st_mtime >= newest


# --- the kinds ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrepareTask(Task):
    """Plan and preprocess (own plans) or transfer plans (which preprocesses), then the compatibility check of the
    fine-tuning (``nnunet-transfer check``) for each configuration with folds left. Done when every fold that needs it
    is done; a second run waits for it instead of skipping it."""

    kind: ClassVar[str] = "prepare"
    noun: ClassVar[str] = "prepare"
    waits_for_lock: ClassVar[bool] = True
    serves_dependents: ClassVar[bool] = True

    id: str  # Dataset902_TwoCh/nnUNetPlans/prepare
    dataset: str
    dataset_id: int
    plans: str
    configurations: tuple[str, ...]
    mode: PlansMode
    pretrained: Path | None  # transferred plans come from it; the check loads it (None: no arm loads weights)
    check_trainer: str  # the fine-tune arm's trainer
    check_recipe: str | None  # the recipe whose loader options the check uses (None: the trainer's own)
    check_arm: Arm = "finetune"  # the arm the compatibility check is for
    #: the arms' own plans: (identifier, recipe JSON) written as copies of the target's plans
    arm_plans: tuple[tuple[str, str], ...] = ()
    #: the label-fraction folds to append to splits_final.json: (request, planned fold index)
    subsets: tuple[tuple[Any, int], ...] = ()

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.plans} prepare"

    def done(self, graph: TaskGraph) -> bool:
        return all(t.done(graph) for t in graph.dependents(self))

    def plan_command(self, env: Mapping[str, str]) -> list[str]:
        n = _num_processes(env)
        if self.mode == "transfer":
            return [console_script("nnunet-transfer"), "plans", "--from", str(self.pretrained), "-t",
                    str(self.dataset_id), "-tp", self.plans, "-c", *self.configurations, *(["-np", n] if n else [])]
        return [console_script("nnUNetv2_plan_and_preprocess"), "-d", str(self.dataset_id), "-c",
                *self.configurations, "--verify_dataset_integrity", *(["-npfp", n, "-np", n] if n else []),
                *(["-overwrite_plans_name", self.plans] if self.plans != OWN_PLANS else [])]

    def preprocess_command(self, configurations: Sequence[str], env: Mapping[str, str]) -> list[str]:
        n = _num_processes(env)
        return [console_script("nnUNetv2_preprocess"), "-d", str(self.dataset_id), "-plans_name", self.plans,
                "-c", *configurations, *(["-np", n] if n else [])]

    def check_command(self, configuration: str) -> list[str]:
        assert self.pretrained is not None
        cmd = [console_script("nnunet-transfer"), "check", str(self.pretrained), "-d", str(self.dataset_id),
               "-c", configuration, "-p", self.plans, "-tr", self.check_trainer]
        return cmd + (["--recipe", self.check_recipe] if self.check_recipe else [])

    def to_check(self, graph: TaskGraph) -> list[str]:
        """Configurations whose fine-tuning still has folds to train: the compatibility check runs for these."""
        if self.pretrained is None:
            return []
        return [c for c in self.configurations
                if any(not t.done(graph) for t in graph.dependents(self, TrainTask)
                       if t.arm == self.check_arm and t.configuration == c)]

    def state(self) -> PrepareState:
        roots = _roots()
        return prepare_state(self, roots.preprocessed, roots.raw)

    def run(self, step: Step) -> tuple[Status, str]:
        if self.done(step.graph):
            return "skipped", "every fold of this target is done"
        env = step.env()
        env.pop(RECIPE_ENV_VAR, None)
        did: list[str] = []
        state = self.state()
        if state.plans_missing:
            cmd = self.plan_command(env)
            code, output = step.command(cmd, env)
            state = self.state()
            # nnunet-transfer plans exits 1 when its own check fails after writing and preprocessing: the check below
            # says why
            if code != 0 and not (self.mode == "transfer" and code == 1 and not state.plans_missing):
                raise TaskFailure(f"{Path(cmd[0]).name} exited with status {code}: {_error_line(output)}", cmd, code)
            did.append("transferred plans" if self.mode == "transfer" else "planned and preprocessed")
            if state.plans_missing:
                raise TaskFailure(f"{Path(cmd[0]).name} did not write {state.plans_file}", cmd, code)
        if state.absent:
            raise TaskFailure(f"{state.plans_file} has no configuration {', '.join(state.absent)} (nnU-Net plans "
                              "only the configurations a dataset needs, e.g. no 3d_lowres for small images): remove "
                              "it from the campaign's configurations for this target")
        if state.incomplete:
            todo = state.incomplete
            cmd = self.preprocess_command(todo, env)
            code, output = step.command(cmd, env)
            if code != 0:
                raise TaskFailure(f"nnUNetv2_preprocess exited with status {code}: {_error_line(output)}", cmd, code)
            state = self.state()
            if state.incomplete:
                raise TaskFailure(f"preprocessing left data incomplete: {state.detail}", cmd, code)
            did.append(f"preprocessed {', '.join(todo)}")
        from nnunet_transfer.nnunet.datasets import ensure_default_splits, raw_case_identifiers

        roots = _roots()
        identifiers = raw_case_identifiers(roots.raw / self.dataset)
        if ensure_default_splits(roots.preprocessed / self.dataset, identifiers):
            did.append("wrote nnU-Net's default splits_final.json")
        did += self._write_subsets(roots.preprocessed / self.dataset, identifiers)
        did += self._write_arm_plans(roots.preprocessed / self.dataset)
        checked = []
        for conf in self.to_check(step.graph):
            cmd = self.check_command(conf)
            code, output = step.command(cmd, env)
            if code == 1:
                raise TaskFailure(f"compatibility check of {conf} failed (the fine-tuning would stop at its load "
                                  f"guard): {_error_line(output)}", cmd, code)
            if code != 0:
                raise TaskFailure(f"nnunet-transfer check exited with status {code}: {_error_line(output)}", cmd,
                                  code)
            checked.append(conf)
        if checked:
            did.append(f"check passed ({', '.join(checked)})")
        return "done", "; ".join(did) if did else "data complete"

    def _write_subsets(self, folder: Path, identifiers: Sequence[str]) -> list[str]:
        """Append the label-fraction folds (reused when recorded); refuse a subset that drops a label."""
        if not self.subsets:
            return []
        from nnunet_transfer.errors import SplitsError
        from nnunet_transfer.nnunet.splits import SIDECAR, SPLITS, base_splits, ensure_subsets, labels_dropped

        before = (folder / SIDECAR).read_bytes() if (folder / SIDECAR).is_file() else b""
        try:
            made = ensure_subsets(folder, [r for r, _ in self.subsets], identifiers)
        except SplitsError as e:
            raise TaskFailure(str(e)) from None
        moved = [(r, planned, made[r.key].fold) for r, planned in self.subsets if made[r.key].fold != planned]
        if moved:
            r, planned, got = moved[0]
            raise TaskFailure(f"{folder / SPLITS}: the subset of base fold {r.base_fold} ({r.n_train} cases) is fold "
                              f"{got}, not {planned} as when the campaign file was loaded (another study appended "
                              "folds meanwhile): run the same command again")
        from nnunet_transfer.nnunet.datasets import read_json

        plans = read_json(folder / f"{self.plans}.json")
        data_id = plans["configurations"][self.configurations[0]].get("data_identifier", "")
        splits = base_splits(folder, identifiers)
        for r, _ in self.subsets:
            dropped = labels_dropped(folder, data_id, splits[r.base_fold]["train"], made[r.key].train)
            if dropped:
                raise TaskFailure(f"fraction {r.fraction:g} of fold {r.base_fold} ({r.n_train} cases, seed {r.seed}) "
                                  f"has no case with label(s) {', '.join(dropped)}: use a larger fraction or "
                                  "another seed")
        after = (folder / SIDECAR).read_bytes() if (folder / SIDECAR).is_file() else b""
        return [f"appended fraction folds to {SPLITS}"] if after != before else []

    def _write_arm_plans(self, folder: Path) -> list[str]:
        """The arms' own plans: the target's plans under another name with the arm's recipe (same data_identifier:
        the preprocessed data is shared). Rewritten only when it differs."""
        if not self.arm_plans:
            return []
        import json

        from nnunet_transfer.core.io import write_json_atomic
        from nnunet_transfer.core.schedules.recipes import RECIPE_PLANS_KEY
        from nnunet_transfer.nnunet.datasets import read_json

        base = read_json(folder / f"{self.plans}.json")
        wrote = []
        for identifier, recipe in self.arm_plans:
            data = {**base, "plans_name": identifier, RECIPE_PLANS_KEY: json.loads(recipe)}
            path = folder / f"{identifier}.json"
            if path.is_file():
                try:
                    if read_json(path) == data:
                        continue
                except Exception:  # an unreadable file is replaced
                    pass
            write_json_atomic(path, data, indent=4)
            wrote.append(identifier)
        return [f"wrote plans {', '.join(wrote)}"] if wrote else []

    def view(self, graph: TaskGraph, env: Mapping[str, str], device: str) -> TaskView:
        if self.done(graph):
            return TaskView(self, "done", "every fold of this target is done")
        state = self.state()
        cmds = []
        if state.plans_missing:
            cmds.append(shlex.join(self.plan_command(env)))
        elif state.incomplete:
            cmds.append(shlex.join(self.preprocess_command(state.incomplete, env)))
        cmds += [shlex.join(self.check_command(c)) for c in self.to_check(graph)]
        label = "to plan" if state.plans_missing else "to preprocess" if state.incomplete else "to check"
        return TaskView(self, label, state.detail, tuple(cmds))


@dataclass(frozen=True)
class TrainTask(Task):
    """One fold of one arm: ``nnUNetv2_train DATASET CONFIGURATION FOLD -tr TRAINER -p PLANS`` into ``fold_dir``
    (new, ``--c`` or ``--val`` as its files say); SIGUSR1 stops it with a checkpoint."""

    kind: ClassVar[str] = "train"
    noun: ClassVar[str] = "train"
    timed: ClassVar[bool] = True
    interruptible: ClassVar[bool] = True

    id: str  # Dataset902_TwoCh/3d_fullres/finetune/fold_0
    dataset: str
    dataset_id: int
    configuration: str
    arm: Arm
    fold: int
    trainer: str
    plans: str
    fold_dir: Path  # $nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>/fold_<fold>
    prepare_id: str
    pretrained: Path | None = None  # -pretrained_weights of a new training (the fine-tune arm)
    recipe: str | None = None  # NNUNET_TRANSFER_RECIPE for its commands (None: the trainer's own recipe)
    npz: bool = False  # nnUNetv2_train --npz: a find-best step ensembles its validation probabilities
    point: FoldPoint | None = None  # with fractions: which base fold and fraction this fold is

    @property
    def label(self) -> str:
        if self.point is None or self.point.full:
            return f"{self.dataset} {self.configuration} {self.arm} fold {self.fold}"
        p = self.point
        return (f"{self.dataset} {self.configuration} {self.arm} fold {p.base_fold} at {p.point} ({p.n_train} "
                f"cases: nnU-Net fold {self.fold})")

    @property
    def base_fold(self) -> int:
        """The fold whose validation cases this one uses (itself at fraction 1)."""
        return self.fold if self.point is None else self.point.base_fold

    @property
    def fraction(self) -> float:
        return 1.0 if self.point is None else self.point.fraction

    @property
    def needs(self) -> tuple[str, ...]:
        return (self.prepare_id,)

    def done(self, graph: TaskGraph) -> bool:
        return train_done(self)

    def command(self, state: TrainState, device: str) -> list[str]:
        """The stock ``nnUNetv2_train`` command for the fold in this state. A new fine-tuning gets
        ``-pretrained_weights``; ``--c`` and ``--val`` never do (nnU-Net refuses both at once)."""
        cmd = [console_script("nnUNetv2_train"), str(self.dataset_id), self.configuration, str(self.fold),
               "-tr", self.trainer, "-p", self.plans]
        if state.kind == "new" and self.pretrained is not None:
            cmd += ["-pretrained_weights", str(self.pretrained)]
        if state.flag:
            cmd.append(state.flag)
        if self.npz:
            cmd.append("--npz")  # the find-best step ensembles the validation probabilities
        return [*cmd, "-device", device]

    def run(self, step: Step) -> tuple[Status, str]:
        state = train_state(self)
        if state.unreadable:
            moved = move_aside(state.unreadable)
            note = "moved aside unreadable " + ", ".join(f"{p.name.split('.unreadable-')[0]} -> {p.name}"
                                                          for p in moved)
            step.say(f"{self.label}: {note} (killed while saving?)")
            step.note(note)
            state = train_state(self)
        if state.kind == "done":
            return "skipped", "already done"
        failed = step.failed_need()
        if failed is not None:
            need, record = failed
            return "blocked", f"its {need.noun} step failed; log: {record.get('log', '?')}"
        env = step.env()
        if self.recipe:
            env[RECIPE_ENV_VAR] = self.recipe
        else:
            env.pop(RECIPE_ENV_VAR, None)  # the trainer's own recipe, whatever the shell says
        cmd = self.command(state, step.device)
        code, output = step.command(cmd, env)
        if code == 0 and train_done(self):
            what = {"new": "trained", "continue": "continued (--c)", "validate": "validated (--val)"}[state.kind]
            return "done", what
        if step.interrupted and code in (PREEMPTED_EXIT_CODE, -signal.SIGUSR1):
            why = ("stopped on request after writing checkpoint_latest.pth" if code == PREEMPTED_EXIT_CODE
                   else "killed by SIGUSR1 (the trainer does not handle it: no checkpoint written)")
            return "preempted", f"{why}; the next run continues it with --c"
        if code == PREEMPTED_EXIT_CODE:
            return "preempted", "the training stopped on a signal after writing checkpoint_latest.pth; " \
                                "the next run continues it with --c"
        if code == 0:
            raise TaskFailure(f"nnUNetv2_train exited 0 but {self.fold_dir} has no checkpoint_final.pth and "
                              "validation/summary.json", cmd, code)
        raise TaskFailure(f"nnUNetv2_train exited with status {code}: {_error_line(output)}", cmd, code)

    def view(self, graph: TaskGraph, env: Mapping[str, str], device: str) -> TaskView:
        state = train_state(self)
        if state.kind == "done":
            return TaskView(self, "done", state.detail)
        cmd = shown_command(self.command(state, device), {RECIPE_ENV_VAR: self.recipe} if self.recipe else {})
        label = {"new": "to train", "continue": "to continue", "validate": "to validate"}[state.kind]
        detail = state.detail + (" (moved aside before it runs)" if state.unreadable else "")
        return TaskView(self, label, detail, (cmd,))


@dataclass(frozen=True)
class FindBestTask(Task):
    """``nnUNetv2_find_best_configuration DATASET -c CONFS -tr TRAINERS -p PLANS -f FOLDS``: the best configuration or
    ensemble of a target's trained folds (``ensembling`` False: ``--disable_ensembling``), once they are all done.
    nnU-Net writes ``inference_information.json`` beside the model folders and, ensembling, ``ensembles/``."""

    kind: ClassVar[str] = "find_best"
    noun: ClassVar[str] = "find-best"

    id: str  # Dataset902_TwoCh/nnUNetPlans/find_best
    dataset: str
    dataset_id: int
    plans: str
    configurations: tuple[str, ...]
    folds: tuple[int, ...]
    trainers: tuple[str, ...]
    ensembling: bool
    train_ids: tuple[str, ...]  # the folds it needs
    prepare_id: str
    result: Path  # $nnUNet_results/<dataset>/inference_information.json

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.plans} find-best" + (" (ensembles)" if self.ensembling else "")

    @property
    def needs(self) -> tuple[str, ...]:
        return self.train_ids

    def command(self, env: Mapping[str, str]) -> list[str]:
        """The stock ``nnUNetv2_find_best_configuration`` over the target's trained folds."""
        cmd = [console_script("nnUNetv2_find_best_configuration"), str(self.dataset_id), "-c", *self.configurations,
               "-tr", *self.trainers, "-p", self.plans, "-f", *map(str, self.folds)]
        if not self.ensembling:
            cmd.append("--disable_ensembling")
        n = _num_processes(env)
        return [*cmd, "-np", n] if n else cmd

    def done(self, graph: TaskGraph) -> bool:
        """nnU-Net's ``inference_information.json`` is there and newer than every fold it was computed from."""
        return _newer_than_its_folds(self.result, self, graph)

    def _left(self, graph: TaskGraph) -> list[Task]:
        return [t for t in graph.needs(self) if not t.done(graph)]

    def run(self, step: Step) -> tuple[Status, str]:
        if self.done(step.graph):
            return "skipped", f"already done ({self.result})"
        left = self._left(step.graph)
        if left:
            return "blocked", f"{len(left)} fold(s) not trained (first: {left[0].id})"
        env = step.env()
        cmd = self.command(env)
        code, output = step.command(cmd, env)
        if code != 0:
            raise TaskFailure(f"nnUNetv2_find_best_configuration exited with status {code}: {_error_line(output)}",
                              cmd, code)
        if not self.done(step.graph):
            raise TaskFailure(f"nnUNetv2_find_best_configuration exited 0 but did not write {self.result}", cmd, code)
        return "done", f"best configuration in {self.result}"

    def view(self, graph: TaskGraph, env: Mapping[str, str], device: str) -> TaskView:
        if self.done(graph):
            return TaskView(self, "done", str(self.result))
        cmd = (shlex.join(self.command(env)),)
        left = self._left(graph)
        if left:
            return TaskView(self, "waiting", f"for {len(left)} fold(s) to finish", cmd)
        return TaskView(self, "to run", f"over {len(self.train_ids)} folds", cmd)


@dataclass(frozen=True)
class TestTask(Task):
    """The held-out test set of a target (raw ``imagesTs``/``labelsTs``) predicted by one arm's fold ensemble at one
    point with the stock ``nnUNetv2_predict``, then scored with the stock ``nnUNetv2_evaluate_folder``. Its output
    folder sits in the arm's model folder, named after the folds it ensembles (``test_folds_5_6``): a study sharing
    the arm shares it. Done when its ``summary.json`` is newer than every fold's ``checkpoint_final.pth``."""

    kind: ClassVar[str] = "test"
    noun: ClassVar[str] = "test"

    id: str  # Dataset902_TwoCh/3d_fullres/full_ft/test@0.25
    dataset: str
    dataset_id: int
    configuration: str
    arm: Arm
    trainer: str
    plans: str
    folds: tuple[int, ...]  # nnU-Net fold indices of the ensemble
    train_ids: tuple[str, ...]
    images: Path  # nnUNet_raw/<dataset>/imagesTs
    labels: Path  # nnUNet_raw/<dataset>/labelsTs
    out: Path  # <model folder>/test_folds_<folds>
    point: FoldPoint | None = None

    @property
    def label(self) -> str:
        at = "" if self.point is None else f" at {self.point.point}"
        return f"{self.dataset} {self.configuration} {self.arm} test set{at} (folds {', '.join(map(str, self.folds))})"

    @property
    def needs(self) -> tuple[str, ...]:
        return self.train_ids

    @property
    def summary(self) -> Path:
        return self.out / "summary.json"

    def predict_command(self, env: Mapping[str, str], device: str) -> list[str]:
        n = _num_processes(env)
        return [console_script("nnUNetv2_predict"), "-i", str(self.images), "-o", str(self.out), "-d",
                str(self.dataset_id), "-c", self.configuration, "-tr", self.trainer, "-p", self.plans, "-f",
                *map(str, self.folds), "-device", device, *(["-npp", n, "-nps", n] if n else [])]

    def evaluate_command(self, env: Mapping[str, str]) -> list[str]:
        n = _num_processes(env)
        return [console_script("nnUNetv2_evaluate_folder"), str(self.labels), str(self.out), "-djfile",
                str(self.out / "dataset.json"), "-pfile", str(self.out / "plans.json"), *(["-np", n] if n else [])]

    def done(self, graph: TaskGraph) -> bool:
        return _newer_than_its_folds(self.summary, self, graph)

    def run(self, step: Step) -> tuple[Status, str]:
        if self.done(step.graph):
            return "skipped", f"already done ({self.summary})"
        left = [t for t in step.graph.needs(self) if not t.done(step.graph)]
        if left:
            return "blocked", f"{len(left)} fold(s) not trained (first: {left[0].id})"
        env = step.env()
        for cmd in (self.predict_command(env, step.device), self.evaluate_command(env)):
            code, output = step.command(cmd, env)
            if code != 0:
                raise TaskFailure(f"{Path(cmd[0]).name} exited with status {code}: {_error_line(output)}", cmd, code)
        if not self.done(step.graph):
            raise TaskFailure(f"nnUNetv2_evaluate_folder exited 0 but did not write {self.summary}")
        return "done", f"test set Dice in {self.summary}"

    def view(self, graph: TaskGraph, env: Mapping[str, str], device: str) -> TaskView:
        if self.done(graph):
            return TaskView(self, "done", str(self.summary))
        cmds = (shlex.join(self.predict_command(env, device)), shlex.join(self.evaluate_command(env)))
        left = [t for t in graph.needs(self) if not t.done(graph)]
        if left:
            return TaskView(self, "waiting", f"for {len(left)} fold(s) to finish", cmds)
        return TaskView(self, "to run", f"{len(self.folds)} folds' ensemble on {self.images}", cmds)


# --- the graph ------------------------------------------------------------------------------------------------------
class TaskGraph:
    """A campaign's tasks in run order, each after the tasks it needs; what each task needs and what needs it.

    Built once (:func:`build_graph`) and shared by every executor: the local one starts the first pending task whose
    needs have ended (:meth:`ready`), SLURM submits each task as a job that depends on its needs' jobs."""

    def __init__(self, tasks: Iterable[Task]):
        self._tasks = tuple(tasks)
        self._by_id: dict[str, Task] = {}
        self._dependents: dict[str, list[Task]] = {}
        for t in self._tasks:
            if t.id in self._by_id:
                raise ValueError(f"task {t.id!r} is in the graph twice")
            for need in t.needs:
                if need not in self._by_id:
                    raise ValueError(f"task {t.id!r} needs {need!r}, which does not come before it")
                self._dependents[need].append(t)
            self._by_id[t.id] = t
            self._dependents[t.id] = []

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._by_id

    def task(self, task_id: str) -> Task:
        """The task of that id (KeyError when there is none)."""
        return self._by_id[task_id]

    def of_type(self, kind: type[T]) -> list[T]:
        """The tasks of one kind, in order."""
        return [t for t in self._tasks if isinstance(t, kind)]

    def needs(self, task: Task, kind: type[T] = Task) -> list[T]:  # type: ignore[assignment]
        """The tasks ``task`` needs (of ``kind``)."""
        return [t for t in (self._by_id[i] for i in task.needs) if isinstance(t, kind)]

    def dependents(self, task: Task, kind: type[T] = Task) -> list[T]:  # type: ignore[assignment]
        """The tasks that need ``task`` (of ``kind``), in order."""
        return [t for t in self._dependents[task.id] if isinstance(t, kind)]

    def ready(self, pending: Iterable[Task], ended: Container[str]) -> Task | None:
        """The first of ``pending`` whose needs have all ``ended`` (ids), or None."""
        return next((t for t in pending if all(i in ended for i in t.needs)), None)

    def counts(self) -> str:
        """``2 prepare, 6 train, 2 find-best``: the tasks by kind, in the order the kinds first appear."""
        return ", ".join(f"{n} {noun}" for noun, n in Counter(t.noun for t in self._tasks).items())


def build_graph(targets: Sequence[Target], arms: Sequence[ArmDef], check_recipe: str | None, results_root: Path,
                find_best: tuple[Sequence[Arm], bool] | None = None, check_arm: ArmDef | None = None,
                test_root: Path | None = None) -> TaskGraph:
    """The graph of a campaign: per target its prepare task, its train tasks (by configuration, base fold, point, then
    arm in file order) and, with ``find_best`` = ``(arms, ensembling)``, a find-best task over those arms' folds at
    fraction 1. ``check_arm``: the arm the compatibility check is for (its trainer and checkpoint). ``test_root``
    (nnUNet_raw): per configuration, arm and point a test task on the target's imagesTs/labelsTs.

    Train ids leave the plans out (``Dataset902_TwoCh/3d_fullres/finetune/fold_0``) unless the dataset is a target
    with other plans too; a fraction fold adds its point (``.../fold_0@0.25``)."""
    tasks: list[Task] = []
    for t in targets:
        arm_plans = tuple(dict.fromkeys((a.plans(t.plans), a.plans_recipe) for a in arms
                                        if a.plans_suffix is not None and a.plans_recipe is not None))
        subsets = tuple(dict.fromkeys(
            (_request(p), p.fold) for p in t.points if not p.full))
        prepare = PrepareTask(id=f"{t.dataset}/{t.plans}/prepare", dataset=t.dataset, dataset_id=t.dataset_id,
                              plans=t.plans, configurations=t.configurations, mode=t.mode,
                              pretrained=check_arm.pretrained if check_arm else None,
                              check_trainer=check_arm.trainer if check_arm else "",
                              check_recipe=check_recipe, check_arm=check_arm.name if check_arm else "",
                              arm_plans=arm_plans, subsets=subsets)
        plans_in_id = len({o.plans for o in targets if o.dataset == t.dataset}) > 1
        trains = []
        for conf in t.configurations:
            for p in t.fold_points():
                for arm in arms:
                    plans = arm.plans(t.plans)
                    base = f"{t.dataset}/{t.plans}/{conf}" if plans_in_id else f"{t.dataset}/{conf}"
                    trains.append(TrainTask(
                        id=f"{base}/{arm.name}/fold_{p.base_fold}" + ("" if p.full else f"@{p.point.replace(' ', '')}"),
                        dataset=t.dataset, dataset_id=t.dataset_id, configuration=conf, arm=arm.name, fold=p.fold,
                        trainer=arm.trainer, plans=plans,
                        fold_dir=results_root / t.dataset / f"{arm.trainer}__{plans}__{conf}" / f"fold_{p.fold}",
                        prepare_id=prepare.id, pretrained=arm.pretrained, recipe=arm.recipe_env,
                        point=p if t.points else None))
        best: list[Task] = []
        if find_best is not None:
            best_arms, ensembling = find_best
            mine = [x for x in trains if x.arm in best_arms and x.fold in t.folds]
            names = tuple(dict.fromkeys(x.trainer for x in mine))
            plans_ids = tuple(dict.fromkeys(x.plans for x in mine))
            ensembles = ensembling and len(t.configurations) * len(names) * len(plans_ids) > 1
            best.append(FindBestTask(
                id=f"{t.dataset}/{t.plans}/find_best", dataset=t.dataset, dataset_id=t.dataset_id, plans=t.plans,
                configurations=t.configurations, folds=t.folds, trainers=names, ensembling=ensembles,
                train_ids=tuple(x.id for x in mine), prepare_id=prepare.id,
                result=results_root / t.dataset / "inference_information.json"))
            if ensembles:
                ids = {x.id for x in mine}
                trains = [replace(x, npz=True) if x.id in ids else x for x in trains]
        tests: list[Task] = []
        if test_root is not None:
            groups: dict[tuple[str, str, str], list[TrainTask]] = {}
            for x in trains:
                groups.setdefault((x.configuration, x.arm, x.point.point if x.point else ""), []).append(x)
            for (conf, arm, point), xs in groups.items():
                folds = tuple(x.fold for x in xs)
                tests.append(TestTask(
                    id=f"{xs[0].id.rsplit('/', 1)[0]}/test" + (f"@{point.replace(' ', '')}" if point else ""),
                    dataset=t.dataset, dataset_id=t.dataset_id, configuration=conf, arm=arm, trainer=xs[0].trainer,
                    plans=xs[0].plans, folds=folds, train_ids=tuple(x.id for x in xs),
                    images=test_root / t.dataset / "imagesTs", labels=test_root / t.dataset / "labelsTs",
                    out=xs[0].fold_dir.parent / f"test_folds_{'_'.join(map(str, folds))}", point=xs[0].point))
        tasks += [prepare, *trains, *tests, *best]
    return TaskGraph(tasks)


def _request(p: FoldPoint) -> Any:
    from nnunet_transfer.nnunet.splits import SubsetRequest

    return SubsetRequest(p.base_fold, p.n_train, p.fraction, p.seed)
