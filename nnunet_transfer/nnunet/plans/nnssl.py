"""nnU-Net plans for the network an nnssl (OpenMind) checkpoint pretrained: the source plans of a plans transfer from
such a checkpoint (``nnunet-transfer plans --from CKPT``). The adaptation plan is read and validated by
:mod:`nnunet_transfer.core.nnssl`; this builds the plans nnU-Net trains with from it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nnunet_transfer.core.nnssl import AdaptationPlan, nnunet_architecture

__all__ = ["nnunet_plans"]


def nnunet_plans(plan: AdaptationPlan, *, patch_size: Sequence[int] | None = None, batch_size: int = 2,
                 configuration: str = "3d_fullres", plans_name: str | None = None,
                 dataset_name: str | None = None, token_order: str | None = None) -> dict[str, Any]:
    """nnU-Net plans (one configuration) that build the pretrained network: the recommended downstream patch size
    (or ``patch_size``), the pretraining spacing, z-score normalisation, ``batch_size``. The target's dataset name,
    intensity statistics and channel count are filled in by the plans transfer. What the pretraining plan says
    (dataset and plans name, data identifier, median spacing and shape) is kept as it is, so that the transfer's diff
    shows the pretraining's own values; entries it lacks are left out, not invented. ``token_order``: how the
    pretraining flattened a Primus's tokens (``NnsslCheckpoint.token_order``; ``hwd`` builds ``PrimusHWD``)."""
    patch = [int(p) for p in (patch_size if patch_size is not None else plan.recommended_downstream_patchsize)]
    arch = nnunet_architecture(plan, patch, token_order=token_order)
    spacing = plan.pretrain_spacing or [1.0, 1.0, 1.0]
    conf = plan.pretrain_configuration
    norm = conf.get("normalization_schemes") or ["ZScoreNormalization"]
    resample = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    pretrain = plan.pretrain_plan
    plans_name = plans_name or str(pretrain.get("plans_name") or "nnsslPlans")
    configuration_dict = {
        "data_identifier": str(conf.get("data_identifier") or f"{plans_name}_{plan.pretrain_configuration_name}"),
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": int(batch_size),
        "patch_size": patch,
        "spacing": [float(s) for s in spacing],
        "normalization_schemes": list(norm[:1]),
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": resample,
        "resampling_fn_seg_kwargs": {**resample, "is_seg": True, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**resample, "order": 1},
        "architecture": arch,
        "batch_dice": False,
    }
    if "median_image_size_in_voxels" in conf:
        configuration_dict["median_image_size_in_voxels"] = conf["median_image_size_in_voxels"]
    plans: dict[str, Any] = {
        "dataset_name": dataset_name or str(pretrain.get("dataset_name") or "nnssl pretraining (unnamed)"),
        "plans_name": plans_name,
    }
    for key in ("original_median_spacing_after_transp", "original_median_shape_after_transp"):
        if key in pretrain:
            plans[key] = pretrain[key]
    return {
        **plans,
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {configuration: configuration_dict},
        "experiment_planner_used": "nnssl adaptation plan (nnunet-transfer)",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
    }
