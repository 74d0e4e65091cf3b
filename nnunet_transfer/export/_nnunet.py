"""The facts of a configuration as nnU-Net itself reads them (PlansManager, ConfigurationManager, LabelManager,
``determine_num_input_channels``), gathered in one place so that the export reads plans and labels exactly as the
predictor does. This is the export's only direct use of nnunetv2 (a candidate for the nnU-Net bridge,
``nnunet_transfer.nnunet``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nnunet_transfer.export.errors import ExportError

__all__ = ["ConfigurationFacts", "configuration_facts"]


@dataclass(frozen=True)
class ConfigurationFacts:
    """One configuration of a plans file, resolved (``inherits_from`` applied), with its dataset's labels."""

    configuration: dict[str, Any]
    patch_size: list[int]
    spacing: list[float]
    normalization_schemes: list[str]
    use_mask_for_norm: list[bool]
    intensity_properties: dict[str, Any]  # foreground_intensity_properties_per_channel
    transpose_forward: list[int]
    transpose_backward: list[int]
    num_input_channels: int
    num_outputs: int  # segmentation heads
    has_regions: bool
    regions: list[Any] | None  # foreground regions, in dataset.json order (None: labels)
    ignore_label: int | None


def configuration_facts(plans: dict[str, Any], configuration: str, dataset_json: dict[str, Any],
                        where: str = "plans.json") -> ConfigurationFacts:
    """Read ``configuration`` of ``plans`` with nnU-Net's own classes; ExportError naming ``where`` when they fail."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    try:
        pm = PlansManager(plans)
        cm = pm.get_configuration(configuration)
        lm = pm.get_label_manager(dataset_json)
        regions = lm.all_regions
        return ConfigurationFacts(
            configuration=dict(cm.configuration),
            patch_size=[int(p) for p in cm.patch_size],
            spacing=[float(s) for s in cm.spacing],
            normalization_schemes=list(cm.normalization_schemes),
            use_mask_for_norm=[bool(m) for m in cm.use_mask_for_norm],
            intensity_properties=dict(pm.foreground_intensity_properties_per_channel),
            transpose_forward=list(pm.transpose_forward),
            transpose_backward=list(pm.transpose_backward),
            num_input_channels=int(determine_num_input_channels(pm, cm, dataset_json)),
            num_outputs=int(lm.num_segmentation_heads),
            has_regions=bool(lm.has_regions),
            regions=[list(r) if isinstance(r, tuple) else r for r in regions] if regions is not None else None,
            ignore_label=lm.ignore_label,
        )
    except (KeyError, TypeError, ValueError, AssertionError, AttributeError) as e:
        raise ExportError(f"{where}: nnU-Net cannot read configuration {configuration!r} with its dataset.json "
                          f"({type(e).__name__}: {e})") from None
