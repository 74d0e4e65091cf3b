"""A campaign's tasks: per target and plans one :class:`PrepareTask`, per target x configuration x arm x fold one
:class:`TrainTask`, and with ``find_best`` per target one :class:`FindBestTask` after its folds. Tasks are plain
values (what to do, where nnU-Net keeps the result); what is already done is read from nnU-Net's files when needed
(:mod:`nnunet_transfer.campaigns.state`), never stored in a task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

__all__ = [
    "ARMS",
    "Arm",
    "FindBestTask",
    "PlansMode",
    "PrepareTask",
    "Target",
    "TrainTask",
    "expand_find_best",
    "expand_tasks",
    "task_slug",
]

Arm = Literal["finetune", "baseline"]
PlansMode = Literal["own", "transfer"]
ARMS: tuple[Arm, ...] = ("finetune", "baseline")


def task_slug(task_id: str) -> str:
    """A task id as a file name (``Dataset902_TwoCh/3d_fullres/finetune/fold_0`` ->
    ``Dataset902_TwoCh.3d_fullres.finetune.fold_0``): its log, lock and failure record are named after it."""
    return task_id.replace("/", ".")


@dataclass(frozen=True)
class Target:
    """One ``targets`` entry of a campaign file, resolved: the dataset's full name and what applies to it."""

    dataset: str  # DatasetXXX_Name
    dataset_id: int
    mode: PlansMode
    plans: str  # plans identifier
    configurations: tuple[str, ...]
    folds: tuple[int, ...]


@dataclass(frozen=True)
class PrepareTask:
    """Plan and preprocess (own plans) or transfer plans (which preprocesses), then the compatibility check."""

    kind: ClassVar[str] = "prepare"

    id: str  # Dataset902_TwoCh/nnUNetPlans/prepare
    dataset: str
    dataset_id: int
    plans: str
    configurations: tuple[str, ...]
    mode: PlansMode

    @property
    def slug(self) -> str:
        return task_slug(self.id)

    @property
    def label(self) -> str:
        """How progress lines name the task."""
        return f"{self.dataset} {self.plans} prepare"


@dataclass(frozen=True)
class TrainTask:
    """One fold of one arm: ``nnUNetv2_train DATASET CONFIGURATION FOLD -tr TRAINER -p PLANS`` into ``fold_dir``."""

    kind: ClassVar[str] = "train"

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

    @property
    def slug(self) -> str:
        return task_slug(self.id)

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.configuration} {self.arm} fold {self.fold}"


@dataclass(frozen=True)
class FindBestTask:
    """``nnUNetv2_find_best_configuration DATASET -c CONFS -tr TRAINERS -p PLANS -f FOLDS``: the best configuration or
    ensemble of a target's trained folds (``ensembling`` False: ``--disable_ensembling``), once they are all done.
    nnU-Net writes ``inference_information.json`` beside the model folders and, ensembling, ``ensembles/``."""

    kind: ClassVar[str] = "find_best"

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
    def slug(self) -> str:
        return task_slug(self.id)

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.plans} find-best" + (" (ensembles)" if self.ensembling else "")


def expand_find_best(prepares: Sequence[PrepareTask], trains: Sequence[TrainTask], targets: Sequence[Target],
                     arms: Sequence[Arm], ensembling: bool, results_root: Path) -> list[FindBestTask]:
    """One find-best task per target (after :func:`expand_tasks`), over the trainers of ``arms`` (the arms the
    campaign has), needing every fold of those arms."""
    out = []
    for prepare, t in zip(prepares, targets, strict=True):
        mine = [x for x in trains if x.prepare_id == prepare.id and x.arm in arms]
        trainers = tuple(dict.fromkeys(x.trainer for x in mine))
        out.append(FindBestTask(
            id=f"{t.dataset}/{t.plans}/find_best", dataset=t.dataset, dataset_id=t.dataset_id, plans=t.plans,
            configurations=t.configurations, folds=t.folds, trainers=trainers,
            ensembling=ensembling and len(t.configurations) * len(trainers) > 1,
            train_ids=tuple(x.id for x in mine), prepare_id=prepare.id,
            result=results_root / t.dataset / "inference_information.json"))
    return out


def expand_tasks(targets: Sequence[Target], trainers: dict[Arm, str],
                 results_root: Path) -> tuple[list[PrepareTask], list[TrainTask]]:
    """The prepare tasks (one per target) and train tasks of ``targets`` for the arms in ``trainers`` (finetune
    first). Train tasks are ordered by target (file order), configuration, fold, then arm."""
    prepares: list[PrepareTask] = []
    trains: list[TrainTask] = []
    arms = [a for a in ARMS if a in trainers]
    for t in targets:
        prepare = PrepareTask(id=f"{t.dataset}/{t.plans}/prepare", dataset=t.dataset, dataset_id=t.dataset_id,
                              plans=t.plans, configurations=t.configurations, mode=t.mode)
        prepares.append(prepare)
        for conf in t.configurations:
            for fold in t.folds:
                for arm in arms:
                    trainer = trainers[arm]
                    fold_dir = results_root / t.dataset / f"{trainer}__{t.plans}__{conf}" / f"fold_{fold}"
                    trains.append(TrainTask(
                        id=f"{t.dataset}/{conf}/{arm}/fold_{fold}" if t.plans == _only_plans(targets, t)
                        else f"{t.dataset}/{t.plans}/{conf}/{arm}/fold_{fold}",
                        dataset=t.dataset, dataset_id=t.dataset_id, configuration=conf, arm=arm, fold=fold,
                        trainer=trainer, plans=t.plans, fold_dir=fold_dir, prepare_id=prepare.id))
    return prepares, trains


def _only_plans(targets: Sequence[Target], target: Target) -> str | None:
    """The target's plans when no other target of the same dataset uses other plans (ids then leave plans out)."""
    others = {t.plans for t in targets if t.dataset == target.dataset}
    return target.plans if len(others) == 1 else None
