"""An nnU-Net model folder (``Trainer__Plans__Configuration``): its plans, dataset.json and folds, and one fold's
checkpoint read safely under nnU-Net's key conventions (DDP ``module.`` and ``torch.compile`` ``_orig_mod.``
prefixes removed). The one reader of model folders: the export, ``share`` and ``load_encoder`` use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nnunet_transfer.core.io import sha256_file
from nnunet_transfer.core.loading.keys import strip_wrappers
from nnunet_transfer.errors import ExportError, ExportRefusedError, NonFiniteWeightsError
from nnunet_transfer.nnunet.configuration import ConfigurationFacts, configuration_facts
from nnunet_transfer.nnunet.datasets import read_json

__all__ = [
    "DEFAULT_CHECKPOINT",
    "FoldCheckpoint",
    "ModelFolder",
    "read_fold_checkpoint",
    "read_model_folder",
]

DEFAULT_CHECKPOINT = "checkpoint_final.pth"


@dataclass(frozen=True)
class ModelFolder:
    """``$nnUNet_results/DatasetXXX_Name/Trainer__Plans__Configuration`` with its plans and dataset.json."""

    path: Path
    trainer: str  # from the folder name
    plans_identifier: str
    configuration: str
    plans: dict[str, Any] = field(repr=False)
    dataset_json: dict[str, Any] = field(repr=False)

    def folds(self) -> list[str]:
        """The folds that have a folder here (``fold_0`` -> ``"0"``, ``fold_all`` -> ``"all"``)."""
        names = [p.name.removeprefix("fold_") for p in self.path.glob("fold_*") if p.is_dir()]
        return sorted(names, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))

    def checkpoint_path(self, fold: int | str, checkpoint_name: str = DEFAULT_CHECKPOINT) -> Path:
        """``fold_F/CHECKPOINT``; ExportError naming what exists when the fold or the checkpoint does not."""
        fold = _fold_name(fold)
        if not checkpoint_name or Path(checkpoint_name).name != checkpoint_name:
            raise ExportError(f"checkpoint {checkpoint_name!r}: give a file name inside the fold folder, e.g. "
                              f"{DEFAULT_CHECKPOINT} or checkpoint_best.pth")
        fold_dir = self.path / f"fold_{fold}"
        if not fold_dir.is_dir():
            have = ", ".join(self.folds()) or "none"
            raise ExportError(f"fold {fold}: {fold_dir} not found (folds in {self.path}: {have})")
        ckpt = fold_dir / checkpoint_name
        if not ckpt.is_file():
            have = ", ".join(sorted(p.name for p in fold_dir.glob("*.pth"))) or "none"
            raise ExportError(f"{ckpt}: not found (checkpoints in {fold_dir.name}: {have}; choose one with -chk)")
        return ckpt

    def facts(self) -> ConfigurationFacts:
        """The configuration's facts as nnU-Net reads them (ExportError naming the folder when it cannot)."""
        return configuration_facts(self.plans, self.configuration, self.dataset_json, str(self.path), ExportError)


def _fold_name(fold: int | str) -> str:
    text = str(fold).strip()
    if text == "all" or (text.isdigit() and not isinstance(fold, bool)):
        return str(int(text)) if text.isdigit() else text
    raise ExportError(f"fold {fold!r}: give a fold number (0, 1, ...) or 'all'")


def read_model_folder(path: str | Path) -> ModelFolder:
    """Read a ``Trainer__Plans__Configuration`` folder. ExportError (exit 2) when it is not one: no such folder, no
    ``plans.json``/``dataset.json``, a name not of that form, a configuration the plans do not have."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"model folder {path}: no such folder")
    if not path.is_dir():
        raise ExportError(f"model folder {path}: is a file; give nnU-Net's Trainer__Plans__Configuration folder")
    if not (path / "plans.json").is_file():
        inner = sorted(p.name for p in path.iterdir() if p.is_dir() and (p / "plans.json").is_file())
        if inner:
            raise ExportError(f"model folder {path}: holds model folders, it is not one (no plans.json); give one of "
                              f"them: {', '.join(inner)}")
        if path.name.startswith("fold_") and (path.parent / "plans.json").is_file():
            raise ExportError(f"model folder {path}: is a fold folder; give its parent {path.parent} and -f "
                              f"{path.name.removeprefix('fold_')}")
        raise ExportError(f"model folder {path}: not an nnU-Net model folder (no plans.json); give the "
                          "Trainer__Plans__Configuration folder, e.g. $nnUNet_results/Dataset001_X/"
                          "nnUNetTrainer__nnUNetPlans__3d_fullres")
    if not (path / "dataset.json").is_file():
        raise ExportError(f"model folder {path}: dataset.json not found beside plans.json")
    parts = path.resolve().name.split("__")
    if len(parts) != 3 or not all(parts):
        raise ExportError(f"model folder {path}: the name {path.resolve().name!r} is not of the form "
                          "Trainer__Plans__Configuration (as nnUNetv2_train names it)")
    trainer, plans_identifier, configuration = parts
    plans = read_json(path / "plans.json")
    dataset_json = read_json(path / "dataset.json")
    available = sorted(plans.get("configurations") or {})
    if configuration not in available:
        raise ExportError(f"model folder {path}: configuration {configuration!r} (from the folder name) is not in "
                          f"{path / 'plans.json'} (configurations: {', '.join(available) or 'none'})")
    return ModelFolder(path, trainer, plans_identifier, configuration, plans, dataset_json)


@dataclass
class FoldCheckpoint:
    """One fold's checkpoint: its tensors under the network's names, and what nnU-Net stored beside them."""

    path: Path
    fold: str
    sha256: str
    state_dict: dict[str, torch.Tensor] = field(repr=False)  # wrapper prefixes (module., _orig_mod.) removed
    wrapper_keys: int  # keys that carried a module. / _orig_mod. prefix in the file
    trainer_name: str
    configuration: str | None
    epoch: int | None
    mirroring_axes: list[int] | None  # ``inference_allowed_mirroring_axes`` (None: not stored)


def read_fold_checkpoint(folder: ModelFolder, fold: int | str,
                         checkpoint_name: str = DEFAULT_CHECKPOINT) -> FoldCheckpoint:
    """Read ``fold_F/CHECKPOINT`` safely (``weights_only``) and check it is that fold's and configuration's.

    ExportError (exit 2) for a missing fold or checkpoint or an unreadable file; ExportRefusedError (exit 1) when
    the file records another fold or configuration than asked for (``init_args``: a copied checkpoint), or when two
    keys name the same tensor once the wrapper prefixes are removed. Raises NonFiniteWeightsError for NaN/Inf.
    """
    from nnunet_transfer.core.loading.checkpoint import read_checkpoint

    fold = _fold_name(fold)
    path = folder.checkpoint_path(fold, checkpoint_name)
    ckpt = read_checkpoint(path)
    init_args = ckpt.init_args
    if "fold" in init_args and str(init_args["fold"]) != fold:
        raise ExportRefusedError(f"{path}: holds the weights of fold {init_args['fold']} (init_args.fold), not of "
                                 f"fold {fold}: refusing to export another fold's weights as fold {fold}")
    if ckpt.configuration is not None and ckpt.configuration != folder.configuration:
        raise ExportRefusedError(f"{path}: holds a {ckpt.configuration!r} training (init_args.configuration), but "
                                 f"the model folder is {folder.configuration!r}'s: refusing to export it")
    state: dict[str, torch.Tensor] = {}
    for key, tensor in ckpt.state_dict.items():
        name = strip_wrappers(key)
        if name in state:
            raise ExportRefusedError(f"{path}: keys {key!r} and another both name tensor {name!r} once the "
                                     "module./_orig_mod. prefixes are removed; the checkpoint is ambiguous")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteWeightsError(f"{path}: tensor {key!r} holds NaN or Inf values; this checkpoint cannot "
                                        "be exported (did the training diverge?)")
        state[name] = tensor
    epoch = ckpt.metadata.get("current_epoch")
    axes = ckpt.metadata.get("inference_allowed_mirroring_axes")
    return FoldCheckpoint(
        path=path, fold=fold, sha256=sha256_file(path), state_dict=state,
        wrapper_keys=sum(strip_wrappers(k) != k for k in ckpt.state_dict),
        trainer_name=ckpt.trainer_name or folder.trainer, configuration=ckpt.configuration,
        epoch=int(epoch) if isinstance(epoch, int) else None,
        mirroring_axes=[int(a) for a in axes] if isinstance(axes, list | tuple) else None,
    )
