"""nnunet-transfer: transfer learning for nnU-Net v2.

Importing the package is cheap (it runs at interpreter start-up through a ``.pth`` hook); the public API below is
loaded on first use.

``_PUBLIC`` is the one table of the public API: ``__all__`` and the lazy look-up are derived from it, and the
``TYPE_CHECKING`` imports (for type checkers and IDEs) are written from it by ``python scripts/public_api.py``
(``tests/unit/test_layout.py`` fails when they differ).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nnunet_transfer._version import __version__

#: module (relative to the package) -> the public names it defines, in the order they are documented
_PUBLIC: dict[str, tuple[str, ...]] = {
    "core.adapters": ("inject_adapters", "merge_adapters", "merge_lora_weights", "has_adapters"),
    "core.architectures": ("ArchitectureSpec", "architecture_for", "list_architectures", "register_architecture",
                           "unregister_architecture"),
    "core.loading.checkpoint": ("SourceCheckpoint", "read_checkpoint"),
    "core.loading.loader": ("load_pretrained", "plan_load", "unwrap_network"),
    "core.loading.options": ("LoadOptions",),
    "core.loading.report": ("LoadReport", "ReasonCode", "TensorRecord"),
    "core.schedules.engine": ("FineTuneEngine",),
    "core.schedules.groups": ("ParameterGroup", "derive_groups"),
    "core.schedules.recipes": ("Adapters", "Recipe", "load_recipe"),
    "core.primus": ("PrimusHWD",),
    "core.schedules.schedule": ("PerGroupLRScheduler", "Schedule", "build_optimizer", "resolve_schedule"),
    "errors": ("AdapterError", "ArchitectureError", "CheckpointError", "LoadGuardError", "MissingTrainerWarning",
               "NonFiniteWeightsError", "PeftMissingError", "PlansError", "RecipeError", "SplitsError",
               "TrainerNotFoundError", "TrainingStateError", "TransferError", "UnsafeCheckpointError"),
    "nnunet.datasets": ("find_target_dataset",),
    "nnunet.networks": ("build_network", "trainer_recipe"),
    "nnunet.plans": ("PlansTransfer", "check_transfer", "preprocess_transfer", "read_source_plans", "transfer_plans",
                     "write_plans"),
    "encoders": ("EncoderClassifier", "FineTuning", "load_encoder", "preprocess_image"),
    "export": ("export_model",),
    "export.adapters": ("apply_adapters", "extract_adapters"),
}

_WHERE: dict[str, str] = {name: module for module, names in _PUBLIC.items() for name in names}

__all__ = ["__version__", *_WHERE]

if TYPE_CHECKING:  # written by scripts/public_api.py from _PUBLIC: do not edit by hand
    from nnunet_transfer.core.adapters import (
        has_adapters as has_adapters,
        inject_adapters as inject_adapters,
        merge_adapters as merge_adapters,
        merge_lora_weights as merge_lora_weights,
    )
    from nnunet_transfer.core.architectures import (
        ArchitectureSpec as ArchitectureSpec,
        architecture_for as architecture_for,
        list_architectures as list_architectures,
        register_architecture as register_architecture,
        unregister_architecture as unregister_architecture,
    )
    from nnunet_transfer.core.loading.checkpoint import (
        SourceCheckpoint as SourceCheckpoint,
        read_checkpoint as read_checkpoint,
    )
    from nnunet_transfer.core.loading.loader import (
        load_pretrained as load_pretrained,
        plan_load as plan_load,
        unwrap_network as unwrap_network,
    )
    from nnunet_transfer.core.loading.options import (
        LoadOptions as LoadOptions,
    )
    from nnunet_transfer.core.loading.report import (
        LoadReport as LoadReport,
        ReasonCode as ReasonCode,
        TensorRecord as TensorRecord,
    )
    from nnunet_transfer.core.primus import (
        PrimusHWD as PrimusHWD,
    )
    from nnunet_transfer.core.schedules.engine import (
        FineTuneEngine as FineTuneEngine,
    )
    from nnunet_transfer.core.schedules.groups import (
        ParameterGroup as ParameterGroup,
        derive_groups as derive_groups,
    )
    from nnunet_transfer.core.schedules.recipes import (
        Adapters as Adapters,
        Recipe as Recipe,
        load_recipe as load_recipe,
    )
    from nnunet_transfer.core.schedules.schedule import (
        PerGroupLRScheduler as PerGroupLRScheduler,
        Schedule as Schedule,
        build_optimizer as build_optimizer,
        resolve_schedule as resolve_schedule,
    )
    from nnunet_transfer.encoders import (
        EncoderClassifier as EncoderClassifier,
        FineTuning as FineTuning,
        load_encoder as load_encoder,
        preprocess_image as preprocess_image,
    )
    from nnunet_transfer.errors import (
        AdapterError as AdapterError,
        ArchitectureError as ArchitectureError,
        CheckpointError as CheckpointError,
        LoadGuardError as LoadGuardError,
        MissingTrainerWarning as MissingTrainerWarning,
        NonFiniteWeightsError as NonFiniteWeightsError,
        PeftMissingError as PeftMissingError,
        PlansError as PlansError,
        RecipeError as RecipeError,
        SplitsError as SplitsError,
        TrainerNotFoundError as TrainerNotFoundError,
        TrainingStateError as TrainingStateError,
        TransferError as TransferError,
        UnsafeCheckpointError as UnsafeCheckpointError,
    )
    from nnunet_transfer.export import (
        export_model as export_model,
    )
    from nnunet_transfer.export.adapters import (
        apply_adapters as apply_adapters,
        extract_adapters as extract_adapters,
    )
    from nnunet_transfer.nnunet.datasets import (
        find_target_dataset as find_target_dataset,
    )
    from nnunet_transfer.nnunet.networks import (
        build_network as build_network,
        trainer_recipe as trainer_recipe,
    )
    from nnunet_transfer.nnunet.plans import (
        PlansTransfer as PlansTransfer,
        check_transfer as check_transfer,
        preprocess_transfer as preprocess_transfer,
        read_source_plans as read_source_plans,
        transfer_plans as transfer_plans,
        write_plans as write_plans,
    )
# end of the written block


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'nnunet_transfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"nnunet_transfer.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
