"""nnunet-transfer: transfer learning for nnU-Net v2.

Importing the package is cheap (it runs at interpreter start-up through a ``.pth`` hook); the public API below is
loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nnunet_transfer._version import __version__

if TYPE_CHECKING:
    from nnunet_transfer.core.architectures import (
        ArchitectureSpec,
        architecture_for,
        list_architectures,
        register_architecture,
        unregister_architecture,
    )
    from nnunet_transfer.core.loading.checkpoint import SourceCheckpoint, read_checkpoint
    from nnunet_transfer.core.loading.loader import load_pretrained, plan_load, unwrap_network
    from nnunet_transfer.core.loading.options import LoadOptions
    from nnunet_transfer.core.loading.report import LoadReport, ReasonCode, TensorRecord
    from nnunet_transfer.core.schedules.groups import ParameterGroup, derive_groups
    from nnunet_transfer.core.schedules.recipes import Recipe, load_recipe
    from nnunet_transfer.core.schedules.schedule import PerGroupLRScheduler, Schedule, build_optimizer, resolve_schedule
    from nnunet_transfer.errors import (
        ArchitectureError,
        CheckpointError,
        LoadGuardError,
        NonFiniteWeightsError,
        PlansError,
        RecipeError,
        TrainingStateError,
        TransferError,
        UnsafeCheckpointError,
    )
    from nnunet_transfer.nnunet.datasets import find_target_dataset
    from nnunet_transfer.nnunet.networks import build_network
    from nnunet_transfer.nnunet.plans import (
        PlansTransfer,
        check_transfer,
        preprocess_transfer,
        read_source_plans,
        transfer_plans,
        write_plans,
    )

__all__ = [
    "ArchitectureError",
    "ArchitectureSpec",
    "CheckpointError",
    "LoadGuardError",
    "LoadOptions",
    "LoadReport",
    "NonFiniteWeightsError",
    "PlansError",
    "PlansTransfer",
    "ReasonCode",
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
    "architecture_for",
    "build_network",
    "build_optimizer",
    "check_transfer",
    "derive_groups",
    "find_target_dataset",
    "load_pretrained",
    "list_architectures",
    "load_recipe",
    "plan_load",
    "preprocess_transfer",
    "read_checkpoint",
    "read_source_plans",
    "register_architecture",
    "resolve_schedule",
    "transfer_plans",
    "unregister_architecture",
    "unwrap_network",
    "write_plans",
    "EncoderClassifier",
    "FineTuning",
    "export_model",
    "load_encoder",
    "preprocess_image",
]

_WHERE = {
    "ArchitectureError": "errors",
    "ArchitectureSpec": "core.architectures",
    "architecture_for": "core.architectures",
    "list_architectures": "core.architectures",
    "register_architecture": "core.architectures",
    "unregister_architecture": "core.architectures",
    "SourceCheckpoint": "core.loading.checkpoint",
    "read_checkpoint": "core.loading.checkpoint",
    "CheckpointError": "errors",
    "LoadGuardError": "errors",
    "NonFiniteWeightsError": "errors",
    "PlansError": "errors",
    "RecipeError": "errors",
    "TrainingStateError": "errors",
    "TransferError": "errors",
    "ParameterGroup": "core.schedules.groups",
    "derive_groups": "core.schedules.groups",
    "UnsafeCheckpointError": "errors",
    "LoadOptions": "core.loading.options",
    "load_pretrained": "core.loading.loader",
    "plan_load": "core.loading.loader",
    "unwrap_network": "core.loading.loader",
    "build_network": "nnunet.networks",
    "find_target_dataset": "nnunet.datasets",
    "PlansTransfer": "nnunet.plans",
    "check_transfer": "nnunet.plans",
    "preprocess_transfer": "nnunet.plans",
    "read_source_plans": "nnunet.plans",
    "transfer_plans": "nnunet.plans",
    "write_plans": "nnunet.plans",
    "Recipe": "core.schedules.recipes",
    "load_recipe": "core.schedules.recipes",
    "PerGroupLRScheduler": "core.schedules.schedule",
    "Schedule": "core.schedules.schedule",
    "build_optimizer": "core.schedules.schedule",
    "resolve_schedule": "core.schedules.schedule",
    "LoadReport": "core.loading.report",
    "ReasonCode": "core.loading.report",
    "TensorRecord": "core.loading.report",
    "EncoderClassifier": "encoders",
    "FineTuning": "encoders",
    "load_encoder": "encoders",
    "preprocess_image": "encoders",
    "export_model": "export",
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
