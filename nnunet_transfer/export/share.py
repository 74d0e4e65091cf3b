"""Share a fine-tuned model as a plain nnU-Net model: the receiver needs nnU-Net only, not this package.

A model folder trained with one of our trainers names that trainer in every checkpoint (``trainer_name``), and
nnU-Net's predictor looks the class up by that name to call its ``build_network_architecture``: without our package
the receiver gets "Could not find requested nnunet trainer". Our trainers build nnU-Net's own network, so the copy
names the nnU-Net trainer whose ``build_network_architecture`` they use (the nearest ancestor shipped by nnunetv2,
``nnUNetTrainer`` for ours) and is checked to hold exactly what that trainer builds: the stock network, built from the
copy's ``plans.json`` as the predictor builds it, must load every fold's weights strictly. A trainer with its own
architecture is refused with the reason.

What changes in the copy (``DatasetXXX_Name/<StockTrainer>__<Plans>__<Configuration>``):

* every ``fold_*/checkpoint*.pth``: ``trainer_name`` -> the stock trainer; ``init_args`` keeps the arguments of
  ``nnUNetTrainer.__init__`` only, its plans without our keys (top-level keys starting with ``nnunet_transfer``);
* every checkpoint of a LoRA fold (``nnUNetTrainerAdaptiveFT_LoRA``): its adapters merged into the weights
  (``W + alpha / rank * B @ A``), the adapter tensors gone, no optimizer state: a plain nnU-Net network;
* ``plans.json`` without our keys;
* ``nnunet_transfer_share.json`` (new): where the copy comes from, the trainers, the keys removed with their values,
  each checkpoint's SHA-256 before and after.

Everything else is copied as it is: ``dataset.json``, ``dataset_fingerprint.json``, ``progress.png``, ``debug.json``,
``fold_*/validation`` (with the ``.npz`` probabilities ``nnUNetv2_find_best_configuration`` ensembles),
``crossval_results_folds_*`` of the folds shared, ``postprocessing.pkl``, and our reports, LR tables and recipes,
which nnU-Net ignores and which document the training. The original folder is only read.

With ``zip=True`` the same tree goes into a zip laid out as ``nnUNetv2_export_model_to_zip`` lays it out (paths
relative to ``nnUNet_results``, validation predictions left out as it leaves them out), which
``nnUNetv2_install_pretrained_model_from_zip`` unpacks into ``nnUNet_results``.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnunet_transfer.core.adapters import is_adapter_key, merge_trained_adapters
from nnunet_transfer.core.io import sha256_file
from nnunet_transfer.errors import ExportError, ExportRefusedError, TrainerNotFoundError, TransferError
from nnunet_transfer.export.model_folder import trainer_not_installed
from nnunet_transfer.nnunet.model_folder import ModelFolder, read_model_folder

__all__ = ["OUR_KEY_PREFIX", "SHARE_RECORD", "SharedModel", "ShareResult", "clean_plans", "share_models",
           "stock_trainer_for"]

OUR_KEY_PREFIX = "nnunet_transfer"  # plans keys of this package (e.g. nnunet_transfer_recipe)
SHARE_RECORD = "nnunet_transfer_share.json"
_DATASET_DIR = re.compile(r"Dataset\d{3}_.+")
_CROSSVAL = re.compile(r"crossval_results_folds_(.+)")
_ZIP_KEEP_CROSSVAL = ("summary.json", "postprocessing.pkl", "postprocessing.json")


@dataclass
class SharedModel:
    """One model folder shared: where from, where to (relative to the output root), which trainers."""

    source: Path
    destination: str  # DatasetXXX_Name/Trainer__Plans__Configuration
    trainer: str
    stock_trainer: str
    folds: list[str]
    removed_plans_keys: dict[str, Any] = field(default_factory=dict)
    checkpoints: dict[str, dict[str, str]] = field(default_factory=dict)  # fold_X/name -> {source, shared} sha256
    adapters_merged: bool = False  # LoRA adapters merged into the weights (the copy has none)


@dataclass
class ShareResult:
    """What :func:`share_models` wrote: a results root (``zip`` False) or a zip file."""

    output: Path
    zip: bool
    models: list[SharedModel]

    def describe(self) -> str:
        lines = []
        for m in self.models:
            renamed = f"{m.trainer} -> {m.stock_trainer}" if m.trainer != m.stock_trainer else f"{m.trainer} (stock)"
            lines.append(f"shared {m.source} as {m.destination} (trainer {renamed}; folds {', '.join(m.folds)})")
        what = "zip for nnUNetv2_install_pretrained_model_from_zip" if self.zip else "results folder"
        lines.append(f"wrote {self.output} ({what}); predict with plain nnU-Net: nnUNetv2_predict ... -tr "
                     f"{self.models[0].stock_trainer}")
        return "\n".join(lines)


def stock_trainer_for(trainer: str | type) -> type:
    """The nnU-Net trainer (shipped by nnunetv2) whose ``build_network_architecture`` ``trainer`` uses: itself when
    nnU-Net ships it, else its nearest such ancestor. ExportError (exit 2) when the trainer builds its own
    architecture (its ``build_network_architecture`` is none of nnU-Net's)."""
    from nnunet_transfer.nnunet.networks import find_trainer_class

    cls = find_trainer_class(trainer)
    build = inspect.getattr_static(cls, "build_network_architecture")
    for base in cls.__mro__:
        if not base.__module__.startswith("nnunetv2."):
            continue
        if inspect.getattr_static(base, "build_network_architecture", None) is build:
            return base
    declared = getattr(cls, "stock_network_trainer", None)  # ours: builds nnU-Net's network (checked per fold)
    if isinstance(declared, str) and declared:
        stock = find_trainer_class(declared)
        if stock.__module__.startswith("nnunetv2."):
            return stock
    owner = next((b for b in cls.__mro__ if "build_network_architecture" in vars(b)), cls)
    raise ExportError(
        f"trainer {cls.__name__}: builds its own network ({owner.__module__}.{owner.__qualname__}."
        "build_network_architecture is not nnU-Net's), so plain nnU-Net cannot rebuild it; share it together with "
        "the package that defines the trainer")


def clean_plans(plans: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The plans as plain nnU-Net knows them (our keys, ``nnunet_transfer_*``, removed), and what was removed."""
    kept = {k: v for k, v in plans.items() if not str(k).startswith(OUR_KEY_PREFIX)}
    return kept, {k: v for k, v in plans.items() if k not in kept}


def _load_checkpoint(path: Path) -> dict[str, Any]:
    import pickle

    import torch

    from nnunet_transfer.core.loading.checkpoint import resolve_globals

    try:
        with torch.serialization.safe_globals(resolve_globals()):
            try:  # memory-mapped: every fold's checkpoints are held until they are written
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # a legacy (non-zip) file cannot be memory-mapped
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{path}: cannot be read as an nnU-Net checkpoint ({first})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("network_weights"), dict):
        raise ExportError(f"{path}: not an nnU-Net checkpoint (no network_weights)")
    return obj


def _stock_checkpoint(ckpt: dict[str, Any], stock: type) -> dict[str, Any]:
    params = [p for p in inspect.signature(stock.__init__).parameters if p != "self"]
    init_args = dict(ckpt.get("init_args") or {})
    if isinstance(init_args.get("plans"), dict):
        init_args["plans"] = clean_plans(init_args["plans"])[0]
    return {**ckpt, "trainer_name": stock.__name__, "init_args": {k: init_args[k] for k in params if k in init_args}}


def _check_network(folder: ModelFolder, plans: dict[str, Any], stock: type, weights: dict[str, Any],
                   where: Path) -> None:
    """The stock trainer's network, built from the shared plans as nnU-Net's predictor builds it, must load the
    fold's weights strictly."""
    import torch

    from nnunet_transfer.nnunet.networks import build_network, disable_deep_supervision

    try:
        with torch.device("meta"):
            network = build_network(plans, folder.configuration, folder.dataset_json, trainer=stock)
    except TransferError as e:
        arch = (plans.get("configurations", {}).get(folder.configuration, {}).get("architecture") or {}).get(
            "network_class_name", "?")
        raise ExportError(f"{where}: {stock.__name__} cannot build this model's network ({arch}) from "
                          f"{folder.path / 'plans.json'}: {e}; plain nnU-Net could not load it, not shared") from None
    disable_deep_supervision(network)
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    problems = [f"{k} missing" for k in expected if k not in got][:1]
    problems += [f"{k} not in {stock.__name__}'s network" for k in got if k not in expected][:1]
    problems += [f"{k}: {got[k]} vs {expected[k]}" for k in expected if k in got and got[k] != expected[k]][:1]
    if problems:
        raise ExportError(f"{where}: its weights do not fit the network {stock.__name__} builds from "
                                 f"{folder.path / 'plans.json'} ({'; '.join(problems)}): plain nnU-Net could not load "
                                 "them; not shared")


def _dataset_dir(folder: ModelFolder) -> str:
    parent = folder.path.resolve().parent.name
    if _DATASET_DIR.fullmatch(parent):
        return parent
    name = str(folder.plans.get("dataset_name") or "")
    if _DATASET_DIR.fullmatch(name):
        return name
    raise ExportError(f"model folder {folder.path}: cannot tell its dataset (neither its parent folder nor plans.json "
                      "dataset_name is of the form DatasetXXX_Name)")


def _model_folders(paths: Sequence[str | os.PathLike], configurations: Sequence[str] | None) -> list[ModelFolder]:
    folders: list[ModelFolder] = []
    for p in map(Path, paths):
        if p.is_dir() and not (p / "plans.json").is_file() and _DATASET_DIR.fullmatch(p.resolve().name):
            inner = sorted(q for q in p.iterdir() if q.is_dir() and (q / "plans.json").is_file())
            if not inner:
                raise ExportError(f"{p}: a dataset folder without model folders (Trainer__Plans__Configuration)")
            folders.extend(read_model_folder(q) for q in inner)
        else:
            folders.append(read_model_folder(p))
    if configurations:
        have = sorted({f.configuration for f in folders})
        unknown = [c for c in configurations if c not in have]
        if unknown:
            raise ExportError(f"configuration {', '.join(unknown)}: no model folder given has it (configurations: "
                              f"{', '.join(have)})")
        folders = [f for f in folders if f.configuration in configurations]
    return folders


def _folds(folder: ModelFolder, folds: Sequence[str] | None) -> list[str]:
    have = folder.folds()
    if not have:
        raise ExportError(f"model folder {folder.path}: no fold_* folder, nothing to share")
    if not folds:
        return have
    wanted = [str(f).strip() for f in folds]
    for f in wanted:
        folder.checkpoint_path(f, "checkpoint_final.pth")  # ExportError naming the folds that exist
    return [f for f in have if f in wanted]


def _files(folder: ModelFolder, folds: list[str]) -> list[Path]:
    """Relative paths of the files to share: all but other folds, crossval results of other folds, temporaries."""
    chosen = {f"fold_{f}" for f in folds}
    out = []
    for path in sorted(folder.path.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(folder.path)
        top = rel.parts[0]
        if top.startswith("fold_") and top not in chosen and len(rel.parts) > 1:
            continue
        cv = _CROSSVAL.fullmatch(top)
        if cv and len(rel.parts) > 1 and not set(cv.group(1).split("_")) <= {f.removeprefix("fold_") for f in chosen}:
            continue
        if path.name.startswith(".") and path.name.endswith(".tmp.pth"):
            continue
        out.append(rel)
    return out


def _in_zip(rel: Path) -> bool:
    """What ``nnUNetv2_export_model_to_zip`` leaves out by default: validation predictions (summary.json kept),
    crossval predictions (summary/postprocessing kept)."""
    parts = rel.parts
    if len(parts) >= 3 and parts[0].startswith("fold_") and parts[1] == "validation":
        return parts[-1] == "summary.json" and len(parts) == 3
    if _CROSSVAL.fullmatch(parts[0]) and len(parts) > 1:
        return len(parts) == 2 and parts[1] in _ZIP_KEEP_CROSSVAL
    return True


@dataclass
class _Plan:
    folder: ModelFolder
    model: SharedModel
    stock: type
    plans: dict[str, Any]
    files: list[Path]
    checkpoints: dict[Path, dict[str, Any]]


def _plan(folder: ModelFolder, folds: Sequence[str] | None, builder: str | type | None = None) -> _Plan:
    from nnunet_transfer.core.loading.keys import strip_wrappers

    chosen = _folds(folder, folds)
    files = _files(folder, chosen)
    plans, removed = clean_plans(folder.plans)
    checkpoints: dict[Path, dict[str, Any]] = {}
    trainers: set[str] = set()
    for rel in files:
        if rel.parts[0].startswith("fold_") and len(rel.parts) == 2 and rel.suffix == ".pth":
            ckpt = _load_checkpoint(folder.path / rel)
            trainers.add(str(ckpt.get("trainer_name") or folder.trainer))
            checkpoints[rel] = ckpt
            if any(strip_wrappers(k) != k for k in ckpt["network_weights"]):
                raise ExportRefusedError(f"{folder.path / rel}: network_weights carry module./_orig_mod. prefixes "
                                         "that nnU-Net's predictor does not remove; not shared")
    if not any(rel.name == "checkpoint_final.pth" for rel in checkpoints):
        raise ExportError(f"model folder {folder.path}: no fold_*/checkpoint_final.pth in folds "
                          f"{', '.join(chosen)}; nnU-Net predicts with checkpoint_final.pth")
    if len(trainers) > 1:
        raise ExportRefusedError(f"model folder {folder.path}: its checkpoints name different trainers "
                                 f"({', '.join(sorted(trainers))}); not shared")
    trainer = trainers.pop()
    try:
        stock = stock_trainer_for(builder if builder is not None else trainer)
    except TrainerNotFoundError as e:
        if builder is not None:
            raise
        raise trainer_not_installed(e, f"model folder {folder.path}") from None
    merged = False
    for rel, ckpt in checkpoints.items():
        if any(is_adapter_key(k) for k in ckpt["network_weights"]):  # LoRA: plain nnU-Net gets the merged weights
            # without the optimizer state of the adapted network, which fits no plain network
            ckpt = {**ckpt, "network_weights": merge_trained_adapters(ckpt["network_weights"], folder.plans,
                                                                      folder.path / rel), "optimizer_state": None}
            merged = True
        _check_network(folder, plans, stock, ckpt["network_weights"], folder.path / rel)
        checkpoints[rel] = _stock_checkpoint(ckpt, stock)
    name = f"{stock.__name__}__{folder.plans_identifier}__{folder.configuration}"
    model = SharedModel(folder.path, f"{_dataset_dir(folder)}/{name}", trainer, stock.__name__, chosen, removed,
                        adapters_merged=merged)
    return _Plan(folder, model, stock, plans, files, checkpoints)


def _write_tree(plan: _Plan, root: Path, for_zip: bool) -> None:
    import torch

    dest = root / plan.model.destination
    for rel in plan.files:
        if for_zip and not _in_zip(rel):
            continue
        src, out = plan.folder.path / rel, dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if rel in plan.checkpoints:
            torch.save(plan.checkpoints[rel], out)
            plan.model.checkpoints[rel.as_posix()] = {"source_sha256": sha256_file(src),
                                                      "shared_sha256": sha256_file(out)}
        elif rel == Path("plans.json"):
            out.write_text(json.dumps(plan.plans, indent=4))
        else:
            shutil.copy2(src, out)
    record = {
        "shared_from": str(plan.folder.path.resolve()),
        "trainer": plan.model.trainer,
        "stock_trainer": plan.model.stock_trainer,
        "folds": plan.model.folds,
        "removed_plans_keys": plan.model.removed_plans_keys,
        "checkpoints": plan.model.checkpoints,
        "nnunet_transfer": _version(),
        "adapters_merged": plan.model.adapters_merged,
        "note": "trainer_name and init_args of every checkpoint and plans.json were made nnU-Net's own; the network "
                + ("weights are the fold's with its LoRA adapters merged in (no optimizer state). "
                   if plan.model.adapters_merged else "weights are unchanged. ")
                + "Our reports, LR tables and recipes stay as documentation.",
    }
    (dest / SHARE_RECORD).write_text(json.dumps(record, indent=2, default=str))


def _version() -> str:
    from nnunet_transfer._version import __version__

    return __version__


def _inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def share_models(
    model_folders: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    configurations: Sequence[str] | None = None,
    folds: Sequence[str] | None = None,
    zip: bool = False,
    overwrite: bool = False,
    trainer: str | type | None = None,
) -> ShareResult:
    """Write plain nnU-Net copies of ``model_folders`` (each a ``Trainer__Plans__Configuration`` folder, or a
    ``DatasetXXX_Name`` results folder for all its model folders, filtered by ``configurations``) under ``output``
    (a results root: ``output/DatasetXXX_Name/<StockTrainer>__Plans__Configuration``), or into the zip ``output``.

    Everything is read and checked before anything is written: ExportError (exit 2) for unusable input (not a model
    folder, a missing fold, an existing output without ``overwrite``, a network plain nnU-Net cannot rebuild),
    ExportRefusedError (exit 1) for an ambiguous model (checkpoints naming different trainers, prefixed weights).
    The folders given are only read. ``trainer``: the trainer whose network the checkpoints hold, where theirs is
    not installed here (default: the checkpoints' ``trainer_name``); the stock network it builds must load every
    fold's weights strictly, as always.
    """
    output = Path(output)
    folders = _model_folders(model_folders, configurations)
    plans = [_plan(f, folds, trainer) for f in folders]
    seen: dict[str, Path] = {}
    for p in plans:
        if p.model.destination in seen:
            raise ExportError(f"{p.folder.path} and {seen[p.model.destination]} would both be shared as "
                              f"{p.model.destination}; share them one at a time")
        seen[p.model.destination] = p.folder.path
        if _inside(output, p.folder.path) or (not zip and _inside(p.folder.path, output / p.model.destination)):
            raise ExportError(f"output {output}: inside (or the same as) the model folder {p.folder.path}, which "
                              "is never changed; choose another output")
    targets = [output] if zip else [output / p.model.destination for p in plans]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise ExportError(f"output {existing[0]}: exists; pass --overwrite to replace it")
    if zip and output.is_dir():
        raise ExportError(f"output {output}: is a folder; give the zip file to write")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".nnunet_transfer_share_", dir=output.parent))
    try:
        for p in plans:
            _write_tree(p, staging, zip)
        if zip:
            tmp_zip = staging / "shared.zip"
            with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as zf:
                for p in plans:
                    for rel in [*p.files, Path(SHARE_RECORD)]:
                        if _in_zip(rel):
                            zf.write(staging / p.model.destination / rel, f"{p.model.destination}/{rel.as_posix()}")
            os.replace(tmp_zip, output)
        else:
            for p in plans:
                dest = output / p.model.destination
                if dest.exists():
                    shutil.rmtree(dest)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / p.model.destination, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ShareResult(output, zip, [p.model for p in plans])
