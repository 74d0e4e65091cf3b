"""Networks as nnU-Net builds them for a dataset's plans."""

from __future__ import annotations

from typing import Any

from torch import nn

from nnunet_transfer.errors import PlansError

__all__ = ["build_network"]


def build_network(plans: dict[str, Any], configuration: str, dataset_json: dict[str, Any]) -> nn.Module:
    """Build (on CPU, with deep supervision) the network nnU-Net's default trainer builds for these plans."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    available = sorted(plans.get("configurations", {}))
    if configuration not in available:
        raise PlansError(f"configuration {configuration!r} not in plans {pm.plans_name!r} (available: {available})")
    cm = pm.get_configuration(configuration)
    num_inputs = determine_num_input_channels(pm, cm, dataset_json)
    heads = pm.get_label_manager(dataset_json).num_segmentation_heads
    return get_network_from_plans(
        cm.network_arch_class_name,
        cm.network_arch_init_kwargs,
        cm.network_arch_init_kwargs_req_import,
        num_inputs,
        heads,
        allow_init=True,
        deep_supervision=True,
    )
