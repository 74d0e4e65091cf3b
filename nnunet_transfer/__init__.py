"""nnunet-transfer: transfer learning for nnU-Net v2.

Importing the package is cheap (it runs at interpreter start-up through a ``.pth`` hook); the public API below is
loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nnunet_transfer._version import __version__

if TYPE_CHECKING:
    from nnunet_transfer.checkpoint import SourceCheckpoint, read_checkpoint
    from nnunet_transfer.errors import (
        CheckpointError,
        LoadGuardError,
        NonFiniteWeightsError,
        PlansError,
        RecipeError,
        TrainingStateError,
        TransferError,
        UnsafeCheckpointError,
    )
    from nnunet_transfer.groups import ParameterGroup, derive_groups
    from nnunet_transfer.loader import LoadOptions, load_pretrained, plan_load, unwrap_network
    from nnunet_transfer.nnunet import build_network, find_target_dataset
    from nnunet_transfer.plans import (
        PlansTransfer,
        check_transfer,
        preprocess_transfer,
        read_source_plans,
        transfer_plans,
        write_plans,
    )
    from nnunet_transfer.recipes import Recipe, load_recipe
    from nnunet_transfer.report import LoadReport, TensorRecord
    from nnunet_transfer.schedule import PerGroupLRScheduler, Schedule, build_optimizer, resolve_schedule

__all__ = [
    "CheckpointError",
    "LoadGuardError",
    "LoadOptions",
    "LoadReport",
    "NonFiniteWeightsError",
    "PlansError",
    "PlansTransfer",
    "Recipe",
    "RecipeError",
    "SourceCheckpoint",
    "ParameterGroup",
    "PerGroupLRScheduler",
    "Schedule",
    "TensorRecord",
    "TrainingStateError",
    "TransferError",
    "UnsafeCheckpointError",
    "__version__",
    "build_network",
    "build_optimizer",
    "check_transfer",
    "derive_groups",
    "find_target_dataset",
    "load_pretrained",
    "load_recipe",
    "plan_load",
    "preprocess_transfer",
    "read_checkpoint",
    "read_source_plans",
    "resolve_schedule",
    "transfer_plans",
    "unwrap_network",
    "write_plans",
]

_WHERE = {
    "SourceCheckpoint": "checkpoint",
    "read_checkpoint": "checkpoint",
    "CheckpointError": "errors",
    "LoadGuardError": "errors",
    "NonFiniteWeightsError": "errors",
    "PlansError": "errors",
    "RecipeError": "errors",
    "TrainingStateError": "errors",
    "TransferError": "errors",
    "ParameterGroup": "groups",
    "derive_groups": "groups",
    "UnsafeCheckpointError": "errors",
    "LoadOptions": "loader",
    "load_pretrained": "loader",
    "plan_load": "loader",
    "unwrap_network": "loader",
    "build_network": "nnunet",
    "find_target_dataset": "nnunet",
    "PlansTransfer": "plans",
    "check_transfer": "plans",
    "preprocess_transfer": "plans",
    "read_source_plans": "plans",
    "transfer_plans": "plans",
    "write_plans": "plans",
    "Recipe": "recipes",
    "load_recipe": "recipes",
    "PerGroupLRScheduler": "schedule",
    "Schedule": "schedule",
    "build_optimizer": "schedule",
    "resolve_schedule": "schedule",
    "LoadReport": "report",
    "TensorRecord": "report",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'nnunet_transfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"nnunet_transfer.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
