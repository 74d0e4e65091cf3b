"""A configuration's facts as nnU-Net itself reads them, and nnU-Net's preprocessor run on an image: the one place
outside the trainers where nnU-Net's ``PlansManager``, ``ConfigurationManager``, ``LabelManager`` and
``determine_num_input_channels`` are used.

:func:`configuration_facts` resolves one configuration of a plans dict (``inherits_from`` applied) with its dataset's
labels: spacing, patch size, normalisation with the intensity statistics, transposition, input channels, heads and
regions. The export writes them into its JSON; the encoders describe what an input must look like from them.
:func:`preprocess_files` and :func:`preprocess_array` run the configuration's own preprocessor (``run_case`` /
``run_case_npy``), as nnU-Net's predictor does; nothing here reimplements it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nnunet_transfer.errors import PlansError, TransferError

__all__ = ["ConfigurationFacts", "check_configuration", "configuration_facts", "plans_managers", "preprocess_array",
           "preprocess_files"]


@dataclass(frozen=True)
class ConfigurationFacts:
    """One configuration of a plans file, resolved (``inherits_from`` applied), with its dataset's labels."""

    name: str  # the configuration's name (3d_fullres, 2d, ...)
    configuration: dict[str, Any]  # its resolved entries
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

    @property
    def preprocessor_name(self) -> str:
        return str(self.configuration.get("preprocessor_name", "DefaultPreprocessor"))


def check_configuration(plans: dict[str, Any], configuration: str | None) -> str:
    """``configuration`` if ``plans`` have it; PlansError naming the configurations they have otherwise."""
    available = sorted(plans.get("configurations") or {})
    if configuration is None:
        raise PlansError(f"configuration: name one of the plans' configurations {available}")
    if configuration not in available:
        raise PlansError(f"configuration {configuration!r} not in plans {plans.get('plans_name')!r} "
                         f"(available: {available})")
    return configuration


def plans_managers(plans: dict[str, Any], configuration: str) -> tuple[Any, Any]:
    """nnU-Net's ``(PlansManager, ConfigurationManager)`` for ``configuration`` of ``plans``; PlansError naming the
    configurations the plans have when it is not one of them."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    check_configuration(plans, configuration)
    pm = PlansManager(plans)
    return pm, pm.get_configuration(configuration)


def configuration_facts(plans: dict[str, Any], configuration: str, dataset_json: dict[str, Any],
                        where: str = "plans.json", error: type[TransferError] = PlansError) -> ConfigurationFacts:
    """Read ``configuration`` of ``plans`` with nnU-Net's own classes; ``error`` naming ``where`` when they fail (a
    configuration the plans lack, entries nnU-Net cannot read, a dataset.json without labels)."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    try:
        pm, cm = plans_managers(plans, configuration)
        lm = pm.get_label_manager(dataset_json)
        regions = lm.all_regions
        return ConfigurationFacts(
            name=configuration,
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
    except PlansError as e:
        raise error(f"{where}: {e}") from None
    except (KeyError, TypeError, ValueError, AssertionError, AttributeError) as e:
        raise error(f"{where}: nnU-Net cannot read configuration {configuration!r} with its dataset.json "
                    f"({type(e).__name__}: {e})") from None


def _preprocessor(plans: dict[str, Any], configuration: str) -> tuple[Any, Any, Any]:
    pm, cm = plans_managers(plans, configuration)
    try:
        preprocessor = cm.preprocessor_class(verbose=False)
    except Exception as e:
        name = cm.configuration.get("preprocessor_name")
        raise PlansError(f"configuration {configuration!r}: preprocessor {name!r} not usable "
                         f"({type(e).__name__}: {e})") from None
    return pm, cm, preprocessor


def preprocess_files(files: Sequence[str | os.PathLike], plans: dict[str, Any], configuration: str,
                     dataset_json: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """One case's channel files read with the plans' reader and preprocessed by the configuration's preprocessor
    (``run_case``: transpose, crop to non-zero, normalise, resample). Returns float32 ``(channels, *spatial)`` and
    nnU-Net's properties of the case."""
    pm, cm, preprocessor = _preprocessor(plans, configuration)
    data, _, properties = preprocessor.run_case([str(f) for f in files], None, pm, cm, dataset_json)
    return np.ascontiguousarray(data, dtype=np.float32), properties


def preprocess_array(data: np.ndarray, spacing: Sequence[float], plans: dict[str, Any], configuration: str,
                     dataset_json: dict[str, Any]) -> np.ndarray:
    """An image in memory, ``(channels, *spatial)`` in the reader's axis order with ``spacing``, preprocessed by the
    configuration's preprocessor (``run_case_npy``). Returns float32 ``(channels, *spatial)``."""
    pm, cm, preprocessor = _preprocessor(plans, configuration)
    out, _, _ = preprocessor.run_case_npy(data, None, {"spacing": [float(s) for s in spacing]}, pm, cm, dataset_json)
    return np.ascontiguousarray(out, dtype=np.float32)
