"""Campaign files: YAML validated on load, before any work (unknown keys, wrong types, unknown datasets, a missing
checkpoint, a trainer nnU-Net cannot find, a recipe that does not load...). Every error is a :class:`CampaignError`
naming the file and the field (``targets[1].folds``); loading creates nothing.

A campaign file::

    name: ct-finetune
    pretrained: ../pretrained/checkpoint_final.pth   # relative paths: relative to this file
    trainer: nnUNetTrainerAdaptiveFT
    recipe: default                   # optional; else the trainer's own (its ``recipe`` attribute)
    plans: own                        # own | transfer
    configurations: [3d_fullres]
    folds: [0, 1, 2, 3, 4]
    targets:
      - dataset: 902
      - {dataset: Dataset903_Brain, folds: [0, 1]}
    baseline: {trainer: nnUNetTrainer}
    find_best: {ensembling: true}     # optional: nnUNetv2_find_best_configuration per target once its folds are done
    executor: {kind: local}
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, ValidationError, field_validator

from nnunet_transfer.campaigns.slurm import SlurmExecutorSpec
from nnunet_transfer.campaigns.tasks import (
    Arm,
    FindBestTask,
    PlansMode,
    PrepareTask,
    Target,
    TrainTask,
    expand_find_best,
    expand_tasks,
    task_slug,
)
from nnunet_transfer.core.io import parse_yaml_mapping
from nnunet_transfer.errors import CampaignError, PlansError, TransferError
from nnunet_transfer.nnunet.trainer_lookup import TrainerInfo, locate_trainer

__all__ = [
    "BaselineSpec",
    "Campaign",
    "CampaignSpec",
    "FindBestSpec",
    "LocalExecutorSpec",
    "OWN_PLANS",
    "TargetSpec",
    "load_campaign",
]

OWN_PLANS = "nnUNetPlans"
#: configurations nnUNetv2_plan_and_preprocess makes (others need an existing plans file that has them)
STOCK_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_FORBID = ConfigDict(extra="forbid", frozen=True)


def _id_to_text(value: Any) -> Any:
    """``dataset: 902`` (YAML int) and ``dataset: Dataset902_TwoCh`` are both fine."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Fold = Annotated[StrictInt, Field(ge=0)]
Folds = Annotated[tuple[Fold, ...], Field(min_length=1)]
Configurations = Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(min_length=1)]


class TargetSpec(BaseModel):
    """One ``targets`` entry: a dataset (ID or full name) and what it overrides of the campaign's settings."""

    model_config = _FORBID

    dataset: Annotated[str, BeforeValidator(_id_to_text)]
    configurations: Configurations | None = None
    folds: Folds | None = None
    plans: Literal["own", "transfer"] | None = None
    plans_identifier: str | None = None


class BaselineSpec(BaseModel):
    """``baseline:``: the same targets, configurations and folds trained from scratch."""

    model_config = _FORBID

    trainer: str = "nnUNetTrainer"
    recipe: str | None = None


class FindBestSpec(BaseModel):
    """``find_best:``: after a target's folds, nnU-Net's ``nnUNetv2_find_best_configuration`` on them (its
    ``inference_information.json`` says how to predict). With ``ensembling`` (and more than one model) the folds are
    trained with ``--npz`` so that nnU-Net can ensemble their validation probabilities."""

    model_config = _FORBID

    ensembling: bool = True
    arms: Annotated[tuple[Literal["finetune", "baseline"], ...], Field(min_length=1)] = ("finetune",)

    @field_validator("arms")
    @classmethod
    def _unique_arms(cls, arms: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(arms)) != len(arms):
            raise ValueError(f"an arm is listed twice: {list(arms)}")
        return arms


class LocalExecutorSpec(BaseModel):
    """``executor: {kind: local}``: tasks one after the other; with ``gpus``, one fold per GPU at a time."""

    model_config = _FORBID

    kind: Literal["local"]
    gpus: Annotated[tuple[Annotated[StrictInt, Field(ge=0)], ...], Field(min_length=1)] | None = None

    @field_validator("gpus")
    @classmethod
    def _unique(cls, gpus: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if gpus is not None and len(set(gpus)) != len(gpus):
            raise ValueError(f"a GPU is listed twice: {list(gpus)}")
        return gpus


Executor = Annotated[LocalExecutorSpec | SlurmExecutorSpec, Field(discriminator="kind")]


class CampaignSpec(BaseModel):
    """The campaign file as written (paths not resolved yet); :func:`load_campaign` checks the rest."""

    model_config = _FORBID

    name: str
    pretrained: str
    trainer: str = "nnUNetTrainerAdaptiveFT"
    recipe: str | None = None
    plans: Literal["own", "transfer"] = "own"
    plans_identifier: str | None = None
    configurations: Configurations = ("3d_fullres",)
    folds: Folds = (0, 1, 2, 3, 4)
    targets: Annotated[tuple[TargetSpec, ...], Field(min_length=1)]
    baseline: BaselineSpec | None = None
    find_best: FindBestSpec | None = None
    executor: Executor = LocalExecutorSpec(kind="local")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workdir: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r}: use letters, digits, '_', '-' and '.' (it names folders and plans)")
        return name

    @field_validator("folds")
    @classmethod
    def _unique_folds(cls, folds: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(folds)) != len(folds):
            raise ValueError(f"a fold is listed twice: {list(folds)}")
        return folds


@dataclass(frozen=True)
class Campaign:
    """A validated campaign: its file, spec, state folder (``workdir``) and tasks."""

    path: Path
    spec: CampaignSpec
    workdir: Path
    pretrained: Path
    targets: tuple[Target, ...]
    trainers: dict[Arm, str]
    #: per arm, the value of NNUNET_TRANSFER_RECIPE for its commands (None: unset, the trainer's own recipe)
    recipes: dict[Arm, str | None]
    #: the recipe whose loader options the compatibility check uses (the fine-tune arm's recipe in force)
    check_recipe: str | None
    prepare_tasks: list[PrepareTask] = field(default_factory=list)
    train_tasks: list[TrainTask] = field(default_factory=list)
    find_best_tasks: list[FindBestTask] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The campaign's ``name``."""
        return self.spec.name

    @property
    def tasks(self) -> list[PrepareTask | TrainTask | FindBestTask]:
        """Every task in the order a local run takes them: each target's prepare, its train tasks, its find-best."""
        out: list[PrepareTask | TrainTask | FindBestTask] = []
        for p in self.prepare_tasks:
            out.append(p)
            out.extend(self.trains_of(p))
            out.extend(f for f in self.find_best_tasks if f.prepare_id == p.id)
        return out

    def task(self, task_id: str) -> PrepareTask | TrainTask | FindBestTask:
        """The task of that id; CampaignError when the campaign has none."""
        for t in (*self.prepare_tasks, *self.train_tasks, *self.find_best_tasks):
            if t.id == task_id:
                return t
        raise CampaignError(f"{self.path}: no task {task_id!r} in campaign {self.name}")

    def trains_of(self, prepare: PrepareTask) -> list[TrainTask]:
        """The train tasks that need ``prepare`` (its target's folds, every configuration and arm)."""
        return [t for t in self.train_tasks if t.prepare_id == prepare.id]

    def needs_npz(self, task: TrainTask) -> bool:
        """True when a find-best step ensembles this fold's validation probabilities (``nnUNetv2_train --npz``)."""
        return any(f.ensembling and task.id in f.train_ids for f in self.find_best_tasks)

    def log_path(self, task: PrepareTask | TrainTask | FindBestTask) -> Path:
        """``<workdir>/logs/<task>.log``: the output of every command the task ran, appended."""
        return self.workdir / "logs" / f"{task.slug}.log"

    def lock_path(self, task: PrepareTask | TrainTask | FindBestTask) -> Path:
        """``<workdir>/locks/<task>.lock`` (see :mod:`nnunet_transfer.campaigns.locks`)."""
        return self.workdir / "locks" / f"{task.slug}.lock"

    def failure_path(self, task: PrepareTask | TrainTask | FindBestTask | str) -> Path:
        """``<workdir>/failures/<task>.json`` (a task or a task id): there while the task fails."""
        slug = task if isinstance(task, str) else task.slug
        return self.workdir / "failures" / f"{task_slug(slug)}.json"


# --- loading ------------------------------------------------------------------------------------------------------
def _loc(loc: tuple[Any, ...]) -> str:
    """pydantic's error location as the user wrote it: ``targets[1].folds``, ``executor.gpus[0]``."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i > 0 and loc[i - 1] == "executor" and part in ("local", "slurm"):
            continue  # the discriminated union's tag
        else:
            out += ("." if out else "") + str(part)
    return out or "<top level>"


def _format_errors(path: Path, e: ValidationError) -> str:
    errors = e.errors()
    problems = []
    for err in errors:
        loc = err["loc"]
        if err["type"] == "too_short" and any(o["loc"][: len(loc)] == loc and o["loc"] != loc for o in errors):
            continue  # pydantic also counts a list whose item failed as too short: the item's error says it all
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        msg = msg.replace("valid tuple", "valid list").replace("Tuple should", "List should")  # YAML has lists
        problems.append(f"{_loc(loc)}: {msg}")
    return f"{path}: " + "; ".join(problems)


def _resolve(base: Path, value: str) -> Path:
    p = Path(os.path.expandvars(value)).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _recipe_arg(base: Path, value: str) -> str:
    """A recipe value as the commands get it: a path (relative to the campaign file) or a shipped recipe's name."""
    if value.endswith((".yaml", ".yml")) or "/" in value or (base / value).is_file():
        return str(_resolve(base, value))
    return value


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CampaignError(f"{path}: campaign file not found") from None
    except OSError as e:
        raise CampaignError(f"{path}: cannot read the campaign file ({e.strerror})") from None
    return parse_yaml_mapping(text, str(path), "a campaign file", CampaignError)


class _Checker:
    """Checks of one file; each error names the file and the field."""

    def __init__(self, path: Path):
        self.path = path
        self.base = path.parent

    def fail(self, where: str, message: str) -> CampaignError:
        return CampaignError(f"{self.path}: {where}: {message}")

    def roots(self) -> Any:
        from nnunet_transfer.nnunet.datasets import ENV_VARS, NnUNetRoots

        roots = NnUNetRoots.resolve()
        missing = [ENV_VARS[k] for k in ENV_VARS if getattr(roots, k) is None]
        if missing:
            raise CampaignError(f"{self.path}: {' and '.join(missing)} not set: a campaign reads and writes nnU-Net's "
                                "raw, preprocessed and results folders; set all three")
        return roots

    def pretrained(self, value: str) -> Path:
        p = _resolve(self.base, value)
        if not p.is_file():
            raise self.fail("pretrained", f"{p}: " + ("is a folder, not a checkpoint file" if p.is_dir()
                                                      else "checkpoint file not found"))
        return p

    def target(self, i: int, t: TargetSpec, spec: CampaignSpec, roots: Any) -> Target:
        from nnunet_transfer.nnunet.datasets import dataset_name, read_json

        where = f"targets[{i}]"
        try:
            name = dataset_name(t.dataset, raw=roots.raw, preprocessed=roots.preprocessed, results=roots.results)
        except PlansError as e:
            raise self.fail(f"{where}.dataset", str(e)) from None
        if name is None:
            raise self.fail(f"{where}.dataset", f"dataset {t.dataset!r} not found: give a DatasetXXX_Name or the ID "
                                                f"of a DatasetXXX_* folder in nnUNet_raw ({roots.raw})")
        raw = roots.raw / name
        if not (raw / "dataset.json").is_file():
            raise self.fail(f"{where}.dataset", f"{name} has no raw data ({raw / 'dataset.json'} not found): a "
                                                "campaign plans and checks every target from nnUNet_raw")
        mode: PlansMode = t.plans or spec.plans
        plans = t.plans_identifier or (spec.plans_identifier if mode == spec.plans else None) or (
            OWN_PLANS if mode == "own" else f"{OWN_PLANS}_{spec.name}")
        plans_field = f"{where}.plans_identifier" if t.plans_identifier else "plans_identifier"
        if not _NAME.fullmatch(plans):
            raise self.fail(plans_field, f"{plans!r}: use letters, digits, '_', '-' and '.'")
        if mode == "transfer" and plans == OWN_PLANS:
            raise self.fail(plans_field, f"transferred plans need their own identifier ({OWN_PLANS} is the "
                                         "target's own plans), e.g. nnUNetPlans_transfer")
        confs = t.configurations or spec.configurations
        plans_file = roots.preprocessed / name / f"{plans}.json"
        conf_field = f"{where}.configurations" if t.configurations else "configurations"
        if plans_file.is_file():
            try:
                have = sorted(read_json(plans_file).get("configurations") or {})
            except PlansError as e:
                raise self.fail(f"{where}.dataset", str(e)) from None
            unknown = [c for c in confs if c not in have]
            if unknown:
                raise self.fail(conf_field, f"{', '.join(unknown)} not in {plans_file} (it has: {', '.join(have)})")
        elif mode == "own":
            unknown = [c for c in confs if c not in STOCK_CONFIGURATIONS]
            if unknown:
                raise self.fail(conf_field, f"{', '.join(unknown)}: not a configuration nnUNetv2_plan_and_preprocess "
                                            f"makes ({', '.join(STOCK_CONFIGURATIONS)}), and {plans_file} does not "
                                            "exist yet")
        dataset_id = int(name[len("Dataset"):].split("_", 1)[0])
        return Target(name, dataset_id, mode, plans, tuple(confs), tuple(t.folds or spec.folds))

    def trainer(self, where: str, name: str) -> TrainerInfo:
        info = locate_trainer(name)  # nnU-Net's own trainers and ours, from the sources (no torch import)
        if info is not None:
            return info
        from nnunet_transfer.nnunet.networks import find_trainer_class

        try:
            cls = find_trainer_class(name)
        except TransferError as e:
            raise self.fail(where, str(e)) from None
        recipe = getattr(cls, "recipe", None)
        return TrainerInfo(name, reads_recipes=hasattr(cls, "recipe"), recipe=None if recipe is None else str(recipe))

    def recipe(self, where: str, value: str) -> tuple[str, Any]:
        from nnunet_transfer.core.schedules.recipes import load_recipe

        arg = _recipe_arg(self.base, value)
        try:
            return arg, load_recipe(arg)
        except TransferError as e:
            raise self.fail(where, str(e)) from None


def load_campaign(path: str | os.PathLike) -> Campaign:
    """Read and validate a campaign file; every problem is a :class:`CampaignError` (exit status 2) naming the file
    and field. Checks, in this order: YAML and schema; nnUNet_raw/preprocessed/results set; the pretrained checkpoint;
    each target's dataset (raw data needed), plans and configurations; workdir; the trainers (nnU-Net must find them;
    the arms must not share a results folder); the recipes (they must load; a baseline trains from scratch)."""
    path = Path(path).expanduser().resolve()
    data = _read(path)
    try:
        spec = CampaignSpec.model_validate(data)
    except ValidationError as e:
        raise CampaignError(_format_errors(path, e)) from None
    check = _Checker(path)
    roots = check.roots()
    pretrained = check.pretrained(spec.pretrained)
    targets: list[Target] = []
    seen: dict[tuple[str, str], int] = {}
    for i, t in enumerate(spec.targets):
        target = check.target(i, t, spec, roots)
        key = (target.dataset, target.plans)
        if key in seen:
            raise check.fail(f"targets[{i}].dataset", f"{target.dataset} with plans {target.plans} is already "
                                                      f"targets[{seen[key]}]; merge the two entries")
        seen[key] = i
        targets.append(target)
    workdir = _resolve(path.parent, spec.workdir) if spec.workdir else path.parent / f"{spec.name}.campaign"
    if workdir.exists() and not workdir.is_dir():
        raise check.fail("workdir", f"{workdir}: exists and is not a folder")

    trainers: dict[Arm, str] = {"finetune": spec.trainer}
    ft_class = check.trainer("trainer", spec.trainer)
    recipes: dict[Arm, str | None] = {"finetune": None}
    check_recipe = ft_class.recipe
    if spec.recipe is not None:
        if not ft_class.reads_recipes:
            raise check.fail("recipe", f"trainer {spec.trainer} does not read recipes (not an nnunet-transfer "
                                       "trainer such as nnUNetTrainerAdaptiveFT); remove the recipe or change trainer")
        recipes["finetune"], _ = check.recipe("recipe", spec.recipe)
        check_recipe = recipes["finetune"]
    elif check_recipe is not None:
        check.recipe("trainer", str(check_recipe))
    if spec.baseline is not None:
        b = spec.baseline
        if b.trainer == spec.trainer:
            raise check.fail("baseline.trainer", f"{b.trainer} is also the fine-tune arm's trainer: both arms would "
                                                 "write to the same results folder (<trainer>__<plans>__<configuration>"
                                                 "); use another trainer for the baseline, e.g. nnUNetTrainer")
        b_class = check.trainer("baseline.trainer", b.trainer)
        trainers["baseline"] = b.trainer
        recipes["baseline"] = None
        in_force = b_class.recipe
        where = "baseline.trainer"
        if b.recipe is not None:
            if not b_class.reads_recipes:
                raise check.fail("baseline.recipe", f"trainer {b.trainer} does not read recipes; remove the recipe "
                                                    "or use an nnunet-transfer trainer")
            recipes["baseline"] = in_force = check.recipe("baseline.recipe", b.recipe)[0]
            where = "baseline.recipe"
        if in_force is not None:
            _, recipe = check.recipe(where, str(in_force))
            if recipe.pretrained.required or recipe.pretrained.checkpoint:
                raise check.fail(where, f"recipe {recipe.name} ({recipe.source}) loads pretrained weights "
                                        "(pretrained.required or pretrained.checkpoint): a baseline trains from "
                                        "scratch; use nnUNetTrainer or a recipe with pretrained.required: false")

    prepares, trains = expand_tasks(targets, trainers, roots.results)
    find_best: list[FindBestTask] = []
    if spec.find_best is not None:
        missing = [a for a in spec.find_best.arms if a not in trainers]
        if missing:
            raise check.fail("find_best.arms", f"{', '.join(missing)}: the campaign has no such arm (add a baseline, "
                                               "or list only finetune)")
        if spec.executor.kind != "local":
            raise check.fail("find_best", "runs with the local executor only; run nnUNetv2_find_best_configuration "
                                          "yourself after the SLURM jobs")
        find_best = expand_find_best(prepares, trains, targets, spec.find_best.arms, spec.find_best.ensembling,
                                     roots.results)
    return Campaign(path=path, spec=spec, workdir=workdir, pretrained=pretrained, targets=tuple(targets),
                    trainers=trainers, recipes=recipes,
                    check_recipe=None if check_recipe is None else str(check_recipe),
                    prepare_tasks=prepares, train_tasks=trains, find_best_tasks=find_best)
