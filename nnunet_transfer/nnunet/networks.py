"""Networks as an nnU-Net trainer builds them for a dataset's plans: through the trainer class's own
``build_network_architecture``, so that a trainer variant with its own architecture (``nnUNetTrainerBN``, a user's
trainer) is checked against the network it will really train."""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import pydoc
import warnings
from typing import Any

from torch import nn

from nnunet_transfer.core.modules import unwrap_network
from nnunet_transfer.errors import PlansError, TrainerNotFoundError, TransferError
from nnunet_transfer.nnunet.configuration import plans_managers

__all__ = ["accepts_deep_supervision", "build_from_plans", "build_network", "disable_deep_supervision",
           "find_trainer_class", "trainer_recipe"]


def find_trainer_class(trainer: str | type | None = None) -> type:
    """The trainer class: nnU-Net's ``nnUNetTrainer`` for None, a class as given, a name resolved as
    ``nnUNetv2_train -tr NAME`` resolves it (nnU-Net's trainers, then the ``nnUNet_extTrainer`` folders).
    :class:`~nnunet_transfer.errors.TrainerNotFoundError` (a PlansError) when no trainer has that name."""
    if trainer is None:
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        return nnUNetTrainer
    if isinstance(trainer, type):
        if not callable(getattr(trainer, "build_network_architecture", None)):
            raise PlansError(f"trainer {trainer.__qualname__}: has no build_network_architecture; give an nnU-Net "
                             "trainer class (a subclass of nnUNetTrainer)")
        return trainer
    if not isinstance(trainer, str) or not trainer:
        raise PlansError(f"trainer {trainer!r}: give a trainer class name such as nnUNetTrainer")
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        # nnU-Net prints every folder it searches, and importing its trainer modules warns (torch.jit deprecations)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return recursive_find_trainer_class_by_name(trainer)
    except RuntimeError:
        raise TrainerNotFoundError(
            f"trainer {trainer!r}: not found among nnU-Net's trainers (nnunetv2.training.nnUNetTrainer) nor in the "
            f"folders of nnUNet_extTrainer ({os.environ.get('nnUNet_extTrainer') or 'unset'}); check the name, or put "
            "the folder of its module on nnUNet_extTrainer", trainer) from None
    except AssertionError:
        raise PlansError(f"trainer {trainer!r}: found, but not a subclass of nnUNetTrainer") from None
    except ImportError as e:
        raise PlansError(f"trainer {trainer!r}: a module on nnU-Net's trainer search path fails to import: "
                         f"{type(e).__name__}: {e}") from None


def trainer_recipe(trainer: str | type) -> Any:
    """The recipe a trainer of ours will train with (its ``recipe`` class attribute, or ``NNUNET_TRANSFER_RECIPE``
    where set, as the trainer resolves it), read without instantiating the trainer; None for a trainer that reads no
    recipe (nnU-Net's own). ``trainer``: a class or a name (see :func:`find_trainer_class`)."""
    from nnunet_transfer.core.schedules.recipes import RECIPE_ENV_VAR, load_recipe

    name = getattr(find_trainer_class(trainer), "recipe", None)
    if not isinstance(name, str) or not name:
        return None
    return load_recipe(os.environ.get(RECIPE_ENV_VAR) or name)


def _trainer_name(trainer: str | type | None) -> str:
    return "nnUNetTrainer" if trainer is None else trainer if isinstance(trainer, str) else trainer.__qualname__


def build_network(
    plans: dict[str, Any],
    configuration: str,
    dataset_json: dict[str, Any],
    trainer: str | type | None = None,
) -> nn.Module:
    """Build (with deep supervision, on the current default device) the network ``trainer`` builds for these plans.

    Calls ``trainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
    num_output_channels, enable_deep_supervision)`` as nnU-Net's trainer does (a trainer with the pre-2.7 signature
    gets the architecture arguments, as nnU-Net still allows; with ``trainer`` None a network class without deep
    supervision, such as Primus, is built as our trainers build it). ``trainer``: None for nnU-Net's
    ``nnUNetTrainer``, a trainer class, or its name (see :func:`find_trainer_class`). Errors are PlansError naming
    trainer and configuration.
    """
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    cls = find_trainer_class(trainer)
    pm, cm = plans_managers(plans, configuration)
    num_inputs = determine_num_input_channels(pm, cm, dataset_json)
    heads = pm.get_label_manager(dataset_json).num_segmentation_heads
    build = cls.build_network_architecture
    try:
        if trainer is None and not accepts_deep_supervision(cm.network_arch_class_name):
            return build_from_plans(cm, num_inputs, heads, True)  # Primus: nnUNetTrainer would pass deep_supervision
        if "plans_manager" in inspect.signature(build).parameters:
            return build(pm, cm, num_inputs, heads, True)
        return build(cm.network_arch_class_name, cm.network_arch_init_kwargs, cm.network_arch_init_kwargs_req_import,
                     num_inputs, heads, True)
    except TransferError:
        raise
    except Exception as e:
        raise PlansError(f"trainer {_trainer_name(trainer)}: build_network_architecture fails for configuration "
                         f"{configuration!r} of plans {pm.plans_name!r}: {type(e).__name__}: {e}") from None


def accepts_deep_supervision(network_class_name: str) -> bool:
    """Whether the plans' network class takes ``deep_supervision`` (nnU-Net's U-Nets do, Primus does not). A class
    that cannot be located answers True: nnU-Net's own lookup then reports it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls = pydoc.locate(network_class_name)
    if not isinstance(cls, type):
        return True
    params = inspect.signature(cls.__init__).parameters
    return "deep_supervision" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def build_from_plans(configuration_manager: Any, num_input_channels: int, num_output_channels: int,
                     enable_deep_supervision: bool = True) -> nn.Module:
    """nnU-Net's ``get_network_from_plans`` for a configuration, as ``nnUNetTrainer.build_network_architecture``
    calls it; networks without deep supervision (Primus, as nnssl checkpoints' plans name it) are built without that
    argument, so that they build from the plans alone."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    name = configuration_manager.network_arch_class_name
    return get_network_from_plans(
        name, configuration_manager.network_arch_init_kwargs, configuration_manager.network_arch_init_kwargs_req_import,
        num_input_channels, num_output_channels, allow_init=True,
        deep_supervision=enable_deep_supervision if accepts_deep_supervision(name) else None)


def disable_deep_supervision(network: nn.Module) -> bool:
    """Switch deep supervision off as nnU-Net's trainer does (``decoder.deep_supervision = False`` on the unwrapped
    network); False when the network has no such switch."""
    decoder = getattr(unwrap_network(network), "decoder", None)
    if decoder is None or not hasattr(decoder, "deep_supervision"):
        return False
    decoder.deep_supervision = False
    return True
