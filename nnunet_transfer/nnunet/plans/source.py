"""Step 1 of a plans transfer: the source's plans, from a checkpoint, a plans file or a source dataset."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnunet_transfer.errors import PlansError
from nnunet_transfer.nnunet.datasets import find_target_dataset, read_json

__all__ = ["SourcePlans", "read_source_plans"]


@dataclass
class SourcePlans:
    """Plans of the pretrained model and where they came from."""

    plans: dict[str, Any]
    description: str
    configurations: list[str]  # the default selection
    checkpoint: Any = None  # the SourceCheckpoint, when the plans came from one
    dataset_json: dict[str, Any] | None = None
    # nnssl checkpoints: the normalisation every target channel gets, the pretraining's input channels, and the
    # trainer whose network is checked (a Primus builds only without deep supervision)
    normalization: str | None = None
    input_channels: int | None = None
    trainer: str | None = None


def read_source_plans(
    source: str | os.PathLike,
    source_plans_identifier: str = "nnUNetPlans",
    allow_globals: Sequence[str] = (),
    trust_checkpoint: bool = False,
    *,
    preprocessed: str | os.PathLike | None = None,
) -> SourcePlans:
    """Plans from a checkpoint (``init_args.plans``; an nnssl checkpoint's adaptation plan, see
    :func:`nnunet_transfer.nnunet.plans.nnssl.nnunet_plans`), a plans JSON file, or a source dataset's preprocessed
    folder (under ``preprocessed``, default ``$nnUNet_preprocessed`` read now)."""
    path = Path(source)
    if path.is_file() and path.suffix == ".json":
        plans = read_json(path)
        if "configurations" not in plans:
            raise PlansError(f"{path}: not an nnU-Net plans file (no 'configurations')")
        dj = path.parent / "dataset.json"
        dataset_json = read_json(dj) if dj.is_file() else None
        return SourcePlans(plans, str(path), sorted(plans["configurations"]), None, dataset_json)
    if path.exists() or path.suffix in (".pth", ".pt", ".ckpt", ".safetensors"):
        from nnunet_transfer.core.loading.checkpoint import read_checkpoint

        ckpt = read_checkpoint(path, allow_globals=allow_globals, trust_checkpoint=trust_checkpoint)
        if ckpt.nnssl is not None:
            from nnunet_transfer.nnunet.plans.nnssl import nnunet_plans

            plan = ckpt.nnssl.plan
            plans = nnunet_plans(plan, token_order=ckpt.nnssl.token_order)
            what = (f"{path} (nnssl, {plan.architecture_plans.arch_class_name}, pretrained on {plans['dataset_name']}, "
                    f"configuration {plan.pretrain_configuration_name})")
            return SourcePlans(plans, what,
                               ["3d_fullres"], ckpt, None, normalization="ZScoreNormalization",
                               input_channels=plan.pretrain_num_input_channels, trainer="nnUNetTrainerAdaptiveFT")
        if ckpt.plans is None or "configurations" not in ckpt.plans:
            raise PlansError(
                f"{path}: the checkpoint carries no nnU-Net plans (init_args.plans); it was not written by an nnU-Net "
                "trainer. Give the source dataset or its plans file instead (--from DATASET or --from PLANS.json)"
            )
        confs = [ckpt.configuration] if ckpt.configuration else sorted(ckpt.plans["configurations"])
        return SourcePlans(ckpt.plans, str(path), confs, ckpt, ckpt.dataset_json)
    ds = find_target_dataset(str(source), source_plans_identifier, preprocessed=preprocessed)
    return SourcePlans(ds.plans, f"{ds.name} ({ds.plans_file.name})", sorted(ds.plans["configurations"]), None,
                       ds.dataset_json)
