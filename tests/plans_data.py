"""Small nnU-Net plans and fingerprints written out by hand (the format of nnunetv2 2.8), for fast unit tests of
the nnU-Net bridge without running nnU-Net's planner."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

_ARCH = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "n_conv_per_stage": [2, 2, 2],
        "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}
_RESAMPLING = {
    "resampling_fn_data": "resample_data_or_seg_to_shape",
    "resampling_fn_seg": "resample_data_or_seg_to_shape",
    "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
    "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
    "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
}
_STATS = {"max": 280.0, "mean": 105.0, "median": 102.0, "min": 4.0, "percentile_00_5": 27.0,
          "percentile_99_5": 249.0, "std": 39.0}
DATASET_JSON = {"channel_names": {"0": "MR"}, "labels": {"background": 0, "organ": 1, "lesion": 2},
                "numTraining": 2, "file_ending": ".nii.gz"}


def tiny_plans(dataset_name: str = "Dataset950_Src") -> dict[str, Any]:
    """Plans of a 3-stage PlainConvUNet (4, 8, 16 features) on 16^3 patches at 1 mm, one MR channel."""
    conf = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [16, 16, 16], "median_image_size_in_voxels": [16.0, 16.0, 16.0], "spacing": [1.0, 1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False], **_RESAMPLING,
        "architecture": _ARCH, "batch_dice": False,
    }
    return copy.deepcopy({
        "dataset_name": dataset_name, "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0], "original_median_shape_after_transp": [16, 16, 16],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": conf}, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {"0": _STATS},
    })


def write_fingerprint(folder: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                      num_cases: int) -> Path:
    """nnU-Net's ``dataset_fingerprint.json`` of ``num_cases`` equal cases (z, y, x), as the extractor writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    fingerprint = {
        "foreground_intensity_properties_per_channel": {"0": _STATS},
        "median_relative_size_after_cropping": 1.0,
        "shapes_after_crop": [list(shape)] * num_cases,
        "spacings": [list(spacing)] * num_cases,
    }
    path = folder / "dataset_fingerprint.json"
    path.write_text(json.dumps(fingerprint, indent=4))
    return path
