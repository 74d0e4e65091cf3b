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
    executor: {kind: local}           # local | slurm | any kind registered with register_executor

Executors: each ``executor.kind`` is registered with :func:`register_executor` (its schema, the pydantic model of
the ``executor:`` section, and the function that runs a campaign), beside the executor itself: the built-in ones in
:mod:`~nnunet_transfer.campaigns.local` and :mod:`~nnunet_transfer.campaigns.slurm`, others from any module (or an
entry point of the group ``nnunet_transfer.executors``, as submitit finds its plugins).
"""

from __future__ import annotations

import importlib
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)
from pydantic_core import PydanticCustomError

from nnunet_transfer.campaigns.tasks import (
    OWN_PLANS,
    Arm,
    ArmDef,
    FindBestTask,
    FoldPoint,
    PlansMode,
    PrepareTask,
    Target,
    Task,
    TaskGraph,
    TrainTask,
    build_graph,
    task_slug,
)
from nnunet_transfer.core.io import parse_yaml_mapping, read_text
from nnunet_transfer.errors import CampaignError, PlansError, TransferError
from nnunet_transfer.nnunet.trainer_lookup import TrainerInfo, locate_trainer

__all__ = [
    "ArmSpec",
    "BaselineSpec",
    "Campaign",
    "CampaignSpec",
    "ENTRY_POINT_GROUP",
    "ExecutorEntry",
    "ExecutorSpec",
    "FindBestSpec",
    "OWN_PLANS",
    "TargetSpec",
    "executor_entry",
    "executor_kinds",
    "load_campaign",
    "register_executor",
]

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


class ArmSpec(BaseModel):
    """One ``arms`` entry: a named way of training every fold. ``pretrained`` left out: the campaign's checkpoint;
    ``pretrained: none`` (or null): from scratch. An arm with a ``recipe`` trains under its own plans identifier
    ``<plans>_<name>`` (a copy of the target's plans carrying the recipe), so that it has its own results folder."""

    model_config = _FORBID

    name: str
    trainer: str = "nnUNetTrainerAdaptiveFT"
    recipe: str | None = None
    pretrained: str | None = None

    @field_validator("name")
    @classmethod
    def _arm_name(cls, name: str) -> str:
        if not _NAME.fullmatch(name) or "__" in name:
            raise ValueError(f"{name!r}: use letters, digits, '_', '-' and '.', no '__' (it names plans)")
        return name


Fraction = Annotated[float, Field(gt=0, le=1)]


class FindBestSpec(BaseModel):
    """``find_best:``: after a target's folds, nnU-Net's ``nnUNetv2_find_best_configuration`` on them (its
    ``inference_information.json`` says how to predict). With ``ensembling`` (and more than one model) the folds are
    trained with ``--npz`` so that nnU-Net can ensemble their validation probabilities."""

    model_config = _FORBID

    ensembling: bool = True
    arms: Annotated[tuple[str, ...], Field(min_length=1)] = ("finetune",)

    @field_validator("arms")
    @classmethod
    def _unique_arms(cls, arms: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(arms)) != len(arms):
            raise ValueError(f"an arm is listed twice: {list(arms)}")
        return arms


# --- executors --------------------------------------------------------------------------------------------------
class ExecutorSpec(BaseModel):
    """The base of an executor's schema: the ``executor:`` section of a campaign file, ``kind`` naming the executor.
    A subclass per executor (beside it) adds its keys; unknown keys are errors unless it allows them."""

    model_config = _FORBID

    kind: str

    def names_gpus(self) -> bool:
        """Whether the section names GPUs for the tasks (``device: auto`` is then ``cuda``)."""
        return False


Echo = Callable[[str], None]
#: ``run(campaign, echo)``: run the campaign's tasks not done yet, print progress through ``echo``, return the exit
#: status (0 all done, 1 something failed or is blocked, 75 tasks left to another run)
RunCampaign = Callable[["Campaign", Echo], int]
#: entry points of this group are loaded (a module that calls register_executor, or an ExecutorEntry) when a
#: campaign names a kind not registered yet
ENTRY_POINT_GROUP = "nnunet_transfer.executors"
#: the built-in executors: their modules register them when imported
_BUILTIN = {"local": "nnunet_transfer.campaigns.local", "slurm": "nnunet_transfer.campaigns.slurm"}


@dataclass(frozen=True)
class ExecutorEntry:
    """A registered executor: its ``kind``, its schema and the function that runs a campaign with it."""

    kind: str
    spec: type[ExecutorSpec]
    run: RunCampaign


_EXECUTORS: dict[str, ExecutorEntry] = {}
_REGISTRY_LOCK = threading.RLock()


def register_executor(kind: str, spec: type[ExecutorSpec], run: RunCampaign) -> None:
    """Make ``executor: {kind: KIND, ...}`` in a campaign file run through ``run(campaign, echo)``, its section
    validated by ``spec`` (a subclass of :class:`ExecutorSpec`). Registering a kind again replaces it."""
    if not (isinstance(spec, type) and issubclass(spec, ExecutorSpec)):
        raise TypeError(f"register_executor({kind!r}): spec must be a subclass of ExecutorSpec, not {spec!r}")
    with _REGISTRY_LOCK:
        _EXECUTORS[kind] = ExecutorEntry(kind, spec, run)


def _load_entry_points(kind: str | None) -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if kind is not None and ep.name != kind:
            continue
        try:
            loaded = ep.load()  # a module registers itself on import; an ExecutorEntry is registered here
        except Exception as e:  # a broken plugin: one line naming it, not a traceback from inside pydantic
            raise CampaignError(f"executor plugin {ep.name!r} ({ep.value}, entry point group {ENTRY_POINT_GROUP}) "
                                f"cannot be loaded: {type(e).__name__}: {e}") from None
        if isinstance(loaded, ExecutorEntry):
            register_executor(loaded.kind, loaded.spec, loaded.run)


def executor_entry(kind: str) -> ExecutorEntry | None:
    """The executor registered for ``kind`` (a built-in one's module, or an entry point of that name, is imported
    on first use); None when there is none."""
    with _REGISTRY_LOCK:
        if kind not in _EXECUTORS and kind in _BUILTIN:
            importlib.import_module(_BUILTIN[kind])
        if kind not in _EXECUTORS:
            _load_entry_points(kind)
        return _EXECUTORS.get(kind)


def executor_kinds() -> list[str]:
    """Every executor kind a campaign file may name: the built-in ones, the registered ones, the entry points'."""
    from importlib.metadata import entry_points

    others = {*_EXECUTORS, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))} - set(_BUILTIN)
    return [*_BUILTIN, *sorted(others)]


def _executor_section(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """The ``executor:`` section validated by the schema of its ``kind`` (its errors keep their place:
    ``executor.gpus[0]``); an unknown or missing kind is one error listing the known ones."""
    if isinstance(value, ExecutorSpec):
        return value
    if not isinstance(value, dict):
        return handler(value)  # pydantic's own "should be a valid dictionary"
    kind = value.get("kind")
    entry = executor_entry(kind) if isinstance(kind, str) else None
    if entry is None:
        known = ", ".join(repr(k) for k in executor_kinds())
        if kind is None:
            raise PydanticCustomError("executor_kind", "kind missing (the executors: {known})", {"known": known})
        raise PydanticCustomError("executor_kind", "unknown kind {kind} (the executors: {known})",
                                  {"kind": repr(kind), "known": known})
    return entry.spec.model_validate(value)


def _local_executor() -> ExecutorSpec:
    """The default ``executor: {kind: local}``."""
    entry = executor_entry("local")
    assert entry is not None  # built in
    return entry.spec(kind="local")


class CampaignSpec(BaseModel):
    """The campaign file as written (paths not resolved yet); :func:`load_campaign` checks the rest."""

    model_config = _FORBID

    name: str
    pretrained: str | None = None
    trainer: str = "nnUNetTrainerAdaptiveFT"
    recipe: str | None = None
    plans: Literal["own", "transfer"] = "own"
    plans_identifier: str | None = None
    configurations: Configurations = ("3d_fullres",)
    folds: Folds = (0, 1, 2, 3, 4)
    targets: Annotated[tuple[TargetSpec, ...], Field(min_length=1)]
    baseline: BaselineSpec | None = None
    #: a study: any number of named arms instead of trainer/recipe/baseline
    arms: Annotated[tuple[ArmSpec, ...], Field(min_length=1)] | None = None
    reference: str | None = None  # the arm the others are compared with (default: the first from scratch)
    fractions: Annotated[tuple[Fraction, ...], Field(min_length=1)] | None = None
    train_cases: Annotated[tuple[Annotated[StrictInt, Field(ge=1)], ...], Field(min_length=1)] | None = None
    seed: StrictInt = 0  # draws the label-fraction subsets
    test: bool = False  # predict and score each target's imagesTs/labelsTs with every arm's fold ensemble
    find_best: FindBestSpec | None = None
    executor: Annotated[ExecutorSpec, WrapValidator(_executor_section)] = Field(default_factory=_local_executor)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workdir: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r}: use letters, digits, '_', '-' and '.' (it names folders and plans)")
        return name

    @field_validator("folds", "fractions", "train_cases")
    @classmethod
    def _unique_folds(cls, values: tuple[Any, ...] | None, info: ValidationInfo) -> tuple[Any, ...] | None:
        if values is not None and len(set(values)) != len(values):
            what = {"folds": "a fold", "fractions": "a fraction"}.get(info.field_name or "", "a value")
            raise ValueError(f"{what} is listed twice: {list(values)}")
        return values


@dataclass(frozen=True)
class Campaign:
    """A validated campaign: its file, spec, state folder (``workdir``) and its task graph (built once, shared by
    every executor)."""

    path: Path
    spec: CampaignSpec
    workdir: Path
    pretrained: Path | None
    targets: tuple[Target, ...]
    trainers: dict[Arm, str]
    #: per arm, the value of NNUNET_TRANSFER_RECIPE for its commands (None: unset, the trainer's own recipe)
    recipes: dict[Arm, str | None]
    #: the recipe whose loader options the compatibility check uses (the fine-tune arm's recipe in force)
    check_recipe: str | None
    graph: TaskGraph
    #: every arm, resolved, in file order
    arms: tuple[ArmDef, ...] = ()
    #: the arm the report compares the others with
    reference: Arm | None = None

    @property
    def name(self) -> str:
        """The campaign's ``name``."""
        return self.spec.name

    @property
    def tasks(self) -> list[Task]:
        """Every task in the order a local run takes them: each target's prepare, its train tasks, its find-best."""
        return list(self.graph)

    @property
    def prepare_tasks(self) -> list[PrepareTask]:
        return self.graph.of_type(PrepareTask)

    @property
    def train_tasks(self) -> list[TrainTask]:
        return self.graph.of_type(TrainTask)

    @property
    def find_best_tasks(self) -> list[FindBestTask]:
        return self.graph.of_type(FindBestTask)

    def task(self, task_id: str) -> Task:
        """The task of that id; CampaignError when the campaign has none."""
        if task_id not in self.graph:
            raise CampaignError(f"{self.path}: no task {task_id!r} in campaign {self.name}")
        return self.graph.task(task_id)

    def trains_of(self, prepare: PrepareTask) -> list[TrainTask]:
        """The train tasks that need ``prepare`` (its target's folds, every configuration and arm)."""
        return self.graph.dependents(prepare, TrainTask)

    def log_path(self, task: Task) -> Path:
        """``<workdir>/logs/<task>.log``: the output of every command the task ran, appended."""
        return self.workdir / "logs" / f"{task.slug}.log"

    def lock_path(self, task: Task) -> Path:
        """``<workdir>/locks/<task>.lock`` (see :mod:`nnunet_transfer.campaigns.locks`)."""
        return self.workdir / "locks" / f"{task.slug}.lock"

    def fold_lock_path(self, task: Task) -> Path | None:
        """The lock of a train task's fold folder, whoever trains it (another campaign file naming the same fold
        takes the same one): ``$nnUNet_results/.nnunet_transfer/locks/<dataset>.<trainer>__<plans>__<conf>.fold_N.lock``
        (see :func:`~nnunet_transfer.campaigns.locks.fold_lock_path`); None for other tasks."""
        from nnunet_transfer.campaigns.locks import fold_lock_path

        return fold_lock_path(task.fold_dir) if isinstance(task, TrainTask) else None

    def failure_path(self, task: Task | str) -> Path:
        """``<workdir>/failures/<task>.json`` (a task or a task id): there while the task fails."""
        slug = task if isinstance(task, str) else task.slug
        return self.workdir / "failures" / f"{task_slug(slug)}.json"


# --- loading ------------------------------------------------------------------------------------------------------
def _loc(loc: tuple[Any, ...]) -> str:
    """pydantic's error location as the user wrote it: ``targets[1].folds``, ``executor.gpus[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
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
    return parse_yaml_mapping(read_text(path, "campaign", CampaignError), str(path), "a campaign file", CampaignError)


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
    if spec.arms is not None:
        legacy = sorted({"trainer", "recipe", "baseline"} & spec.model_fields_set)
        if legacy:
            raise check.fail(legacy[0], "a campaign file with arms names every arm there: move it into arms "
                                        "(e.g. {name: default, trainer: nnUNetTrainerAdaptiveFT})")
    elif spec.pretrained is None:
        raise check.fail("pretrained", "Field required (the checkpoint the fine-tuned arm starts from)")
    if spec.fractions is not None and spec.train_cases is not None:
        raise check.fail("train_cases", "give fractions or train_cases, not both")
    pretrained = check.pretrained(spec.pretrained) if spec.pretrained is not None else None
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

    if spec.arms is None:
        arms, check_recipe = _legacy_arms(check, spec, pretrained)
    else:
        arms, check_recipe = _study_arms(check, spec, pretrained)
    trainers = {a.name: a.trainer for a in arms}
    recipes = {a.name: a.recipe_env if spec.arms is None else a.recipe_arg for a in arms}
    reference = spec.reference
    if reference is not None and reference not in trainers:
        raise check.fail("reference", f"{reference!r}: no such arm (the arms: {', '.join(trainers)})")
    if reference is None:
        reference = next((a.name for a in arms if a.pretrained is None), arms[-1].name)
    if spec.fractions is not None or spec.train_cases is not None:
        targets = [_with_points(check, i, t, spec, roots) for i, t in enumerate(targets)]
    find_best = None
    if spec.find_best is not None:
        missing = [a for a in spec.find_best.arms if a not in trainers]
        if missing:
            raise check.fail("find_best.arms", f"{', '.join(missing)}: the campaign has no such arm (the arms: "
                                               f"{', '.join(trainers)})")
        own = [a.name for a in arms if a.name in spec.find_best.arms and a.plans_suffix is not None]
        if own:
            raise check.fail("find_best.arms", f"{', '.join(own)}: an arm with its own recipe trains under its own "
                                               "plans; find-best compares arms of one plans identifier")
        find_best = (spec.find_best.arms, spec.find_best.ensembling)
    check_as = None if check_recipe is None else str(check_recipe)
    check_arm = next((a for a in arms if a.pretrained is not None), None)
    if spec.test:
        for i, t in enumerate(targets):
            absent = [d for d in ("imagesTs", "labelsTs") if not (roots.raw / t.dataset / d).is_dir()]
            if absent:
                raise check.fail("test", f"{t.dataset} (targets[{i}]) has no {' and no '.join(absent)} in "
                                         f"{roots.raw / t.dataset}: a held-out test set needs both")
    graph = build_graph(targets, arms, check_as, roots.results, find_best, check_arm,
                        roots.raw if spec.test else None)
    return Campaign(path=path, spec=spec, workdir=workdir, pretrained=pretrained, targets=tuple(targets),
                    trainers=trainers, recipes=recipes, check_recipe=check_as, graph=graph, arms=tuple(arms),
                    reference=reference)


def _scratch_recipe(check: _Checker, where: str, value: str, what: str) -> None:
    """A from-scratch arm's recipe must not load pretrained weights."""
    _, recipe = check.recipe(where, value)
    if recipe.pretrained.required or recipe.pretrained.checkpoint:
        raise check.fail(where, f"recipe {recipe.name} ({recipe.source}) loads pretrained weights "
                                f"(pretrained.required or pretrained.checkpoint): {what} trains from scratch; use "
                                "nnUNetTrainer or a recipe with pretrained.required: false")


def _legacy_arms(check: _Checker, spec: CampaignSpec, pretrained: Path | None) -> tuple[list[ArmDef], str | None]:
    """``trainer``/``recipe``/``baseline``: the fine-tune arm and the optional baseline (the recipe through
    NNUNET_TRANSFER_RECIPE, the target's plans: as before arms existed)."""
    ft_class = check.trainer("trainer", spec.trainer)
    ft_recipe = None
    check_recipe = ft_class.recipe
    if spec.recipe is not None:
        if not ft_class.reads_recipes:
            raise check.fail("recipe", f"trainer {spec.trainer} does not read recipes (not an nnunet-transfer "
                                       "trainer such as nnUNetTrainerAdaptiveFT); remove the recipe or change trainer")
        ft_recipe, _ = check.recipe("recipe", spec.recipe)
        check_recipe = ft_recipe
    elif check_recipe is not None:
        check.recipe("trainer", str(check_recipe))
    arms = [ArmDef("finetune", spec.trainer, pretrained, recipe_env=ft_recipe)]
    if spec.baseline is not None:
        b = spec.baseline
        if b.trainer == spec.trainer:
            raise check.fail("baseline.trainer", f"{b.trainer} is also the fine-tune arm's trainer: both arms would "
                                                 "write to the same results folder (<trainer>__<plans>__<configuration>"
                                                 "); use another trainer for the baseline, e.g. nnUNetTrainer")
        b_class = check.trainer("baseline.trainer", b.trainer)
        b_recipe = None
        in_force = b_class.recipe
        where = "baseline.trainer"
        if b.recipe is not None:
            if not b_class.reads_recipes:
                raise check.fail("baseline.recipe", f"trainer {b.trainer} does not read recipes; remove the recipe "
                                                    "or use an nnunet-transfer trainer")
            b_recipe = in_force = check.recipe("baseline.recipe", b.recipe)[0]
            where = "baseline.recipe"
        if in_force is not None:
            _scratch_recipe(check, where, str(in_force), "a baseline")
        arms.append(ArmDef("baseline", b.trainer, None, recipe_env=b_recipe))
    return arms, check_recipe


def _study_arms(check: _Checker, spec: CampaignSpec, pretrained: Path | None) -> tuple[list[ArmDef], str | None]:
    """``arms:``: each arm's trainer, checkpoint and recipe; an arm with a recipe gets its own plans identifier."""
    import json

    assert spec.arms is not None
    arms: list[ArmDef] = []
    names: dict[str, int] = {}
    folders: dict[tuple[str, str | None], int] = {}
    check_recipe: str | None = None
    for i, a in enumerate(spec.arms):
        where = f"arms[{i}]"
        if a.name in names:
            raise check.fail(f"{where}.name", f"{a.name!r} is used twice (also arms[{names[a.name]}])")
        names[a.name] = i
        info = check.trainer(f"{where}.trainer", a.trainer)
        if "pretrained" not in a.model_fields_set:
            if pretrained is None:
                raise check.fail(f"{where}.pretrained", "no checkpoint: give one here or the campaign's pretrained, "
                                                        "or pretrained: none to train from scratch")
            ckpt: Path | None = pretrained
        elif a.pretrained is None or a.pretrained.lower() == "none":
            ckpt = None
        else:
            ckpt = check.pretrained(a.pretrained)
        suffix = recipe_json = recipe_arg = None
        in_force = info.recipe
        if a.recipe is not None:
            if not info.reads_recipes:
                raise check.fail(f"{where}.recipe", f"trainer {a.trainer} does not read recipes (not an "
                                                    "nnunet-transfer trainer); remove the recipe or change trainer")
            recipe_arg, recipe = check.recipe(f"{where}.recipe", a.recipe)
            in_force = recipe_arg
            suffix = a.name
            recipe_json = json.dumps(recipe.model_dump(mode="json", exclude={"source"}), sort_keys=True)
        elif in_force is not None:
            check.recipe(f"{where}.trainer", str(in_force))
        if ckpt is None and in_force is not None:
            _scratch_recipe(check, f"{where}.recipe" if a.recipe else f"{where}.trainer", str(in_force),
                            f"arm {a.name} (pretrained: none)")
        key = (a.trainer, suffix)
        if key in folders:
            raise check.fail(where, f"arm {a.name} would write into the results folder of arms[{folders[key]}] "
                                    f"({a.trainer}, the same plans): give one of them a recipe or another trainer")
        folders[key] = i
        if ckpt is not None and check_recipe is None and not any(x.pretrained for x in arms):
            check_recipe = None if in_force is None else str(in_force)
        arms.append(ArmDef(a.name, a.trainer, ckpt, plans_suffix=suffix, plans_recipe=recipe_json,
                           recipe_arg=recipe_arg))
    return arms, check_recipe


def _with_points(check: _Checker, i: int, target: Target, spec: CampaignSpec, roots: Any) -> Target:
    """The target's label-fraction folds: per base fold, each fraction's case count and the fold index it has (or
    will get) in splits_final.json; refused here when a fraction leaves no case or (preprocessed data there) drops a
    label. Reads only."""
    from dataclasses import replace

    from nnunet_transfer.errors import SplitsError
    from nnunet_transfer.nnunet.datasets import raw_case_identifiers, read_json
    from nnunet_transfer.nnunet.splits import (
        SubsetRequest,
        base_splits,
        draw_subset,
        labels_dropped,
        plan_subsets,
        subset_size,
    )

    folder = roots.preprocessed / target.dataset
    field = "fractions" if spec.fractions is not None else "train_cases"
    values: tuple[Any, ...] = spec.fractions if spec.fractions is not None else spec.train_cases  # type: ignore
    try:
        identifiers = raw_case_identifiers(roots.raw / target.dataset)
        splits = base_splits(folder, identifiers)
    except (SplitsError, PlansError) as e:
        raise check.fail(f"targets[{i}].dataset", str(e)) from None
    data_id = None
    plans_file = folder / f"{target.plans}.json"
    if plans_file.is_file():
        data_id = read_json(plans_file)["configurations"].get(target.configurations[0], {}).get("data_identifier")
    wanted: list[tuple[int, int, Any, SubsetRequest | None]] = []
    for b in target.folds:
        if b >= len(splits):
            raise check.fail(f"targets[{i}].folds" if spec.targets[i].folds else "folds",
                             f"fold {b}: {folder / 'splits_final.json'} has {len(splits)} folds")
        train = splits[b]["train"]
        for j, v in enumerate(values):
            n = subset_size(len(train), fraction=v) if field == "fractions" else subset_size(len(train), cases=v)
            if n < 1:
                raise check.fail(f"{field}[{j}]", f"{v:g} of fold {b}'s {len(train)} training cases ({target.dataset}) "
                                                  "is no case: use a larger fraction")
            if n > len(train):
                raise check.fail(f"{field}[{j}]", f"{v} cases: fold {b} of {target.dataset} has only {len(train)} "
                                                  "training cases")
            if n == len(train):
                wanted.append((b, j, v, None))
                continue
            r = SubsetRequest(b, n, float(v) if field == "fractions" else n / len(train), spec.seed)
            if data_id:
                dropped = labels_dropped(folder, data_id, train, draw_subset(train, n, spec.seed, b))
                if dropped:
                    raise check.fail(f"{field}[{j}]", f"{v:g} of fold {b} of {target.dataset} ({n} of {len(train)} "
                                                      f"cases, seed {spec.seed}) has no case with label(s) "
                                                      f"{', '.join(dropped)}: use a larger fraction or another seed")
            wanted.append((b, j, v, r))
    try:
        index = plan_subsets(folder, [r for *_, r in wanted if r is not None], identifiers)
    except SplitsError as e:
        raise check.fail(f"targets[{i}].dataset", str(e)) from None
    points = []
    for b, _, v, r in wanted:
        point = f"{v:g}" if field == "fractions" else f"{v} cases"
        if r is None:
            points.append(FoldPoint(b, b, 1.0, len(splits[b]["train"]), point, spec.seed))
        else:
            points.append(FoldPoint(b, index[r.key], r.fraction, r.n_train, point, spec.seed))
    points.sort(key=lambda p: (p.base_fold, p.n_train))
    return replace(target, points=tuple(points))
