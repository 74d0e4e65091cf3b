"""Inputs prepared as in pretraining: the plans' spacing, patch size and normalisation, and nnU-Net's own preprocessor.

A pretrained encoder has only seen images that nnU-Net's preprocessor made: transposed (``transpose_forward``),
cropped to the non-zero region, normalised per channel (``normalization_schemes`` with the dataset's intensity
statistics, e.g. CT clipping and z-score), and resampled to the configuration's ``spacing``. :func:`preprocess_image`
runs that preprocessor (the configuration's ``preprocessor_class``, nnU-Net's ``DefaultPreprocessor`` by default:
``run_case``) on one image, :func:`preprocess_array` on an array already in memory; nothing here reimplements it.
The result is what nnU-Net's predictor feeds its sliding window: ``(channels, *spatial)``, float32, in the
transposed axis order; for a 2d configuration each slice along the first spatial axis is one network input.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nnunet_transfer.errors import PlansError
from nnunet_transfer.nnunet import configuration as nnunet_configuration
from nnunet_transfer.nnunet.datasets import read_json

__all__ = ["PlansSource", "PreprocessingInfo", "preprocess_array", "preprocess_image", "preprocessing_info"]


class PlansSource(Protocol):
    """What carries a model's plans, configuration and dataset.json (an
    :class:`~nnunet_transfer.encoders.EncoderBundle`)."""

    plans: dict[str, Any]
    configuration: str
    dataset_json: dict[str, Any]


@dataclass(frozen=True)
class PreprocessingInfo:
    """What an input must look like for a configuration (all from the plans and the dataset.json)."""

    configuration: str
    spacing: tuple[float, ...]  # target spacing, in the transposed axis order (2 entries for 2d configurations)
    patch_size: tuple[int, ...]  # the training patch size (transposed axis order)
    normalization_schemes: tuple[str, ...]  # one per input channel (nnunetv2.preprocessing.normalization class names)
    use_mask_for_norm: tuple[bool, ...]  # normalise within the non-zero mask only, per channel
    intensity_properties: dict[str, dict[str, float]]  # foreground statistics per channel ("0", "1", ...)
    channel_names: dict[str, str]  # dataset.json channel_names: input channel index -> name (the file's _000X)
    transpose_forward: tuple[int, ...]  # axes of the image, as read, in the order the network sees them
    file_ending: str | None = None  # dataset.json file_ending (e.g. ".nii.gz")
    image_reader_writer: str | None = None  # the plans' reader (e.g. SimpleITKIO)
    preprocessor: str = "DefaultPreprocessor"
    extra: dict[str, Any] = field(default_factory=dict)  # other configuration entries (resampling functions, ...)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    def describe(self) -> str:
        """A few lines for humans."""
        chans = ", ".join(f"{k}: {v} ({s})" for (k, v), s in zip(self.channel_names.items(),
                                                                 self.normalization_schemes, strict=False))
        return (f"configuration {self.configuration}: spacing {list(self.spacing)}, "
                f"patch size {list(self.patch_size)}, transpose_forward {list(self.transpose_forward)}\n"
                f"channels (normalisation): {chans}\n"
                f"reader {self.image_reader_writer}, files *{self.file_ending or ''}, preprocessor {self.preprocessor}")


def _resolve(source: PlansSource | Mapping[str, Any] | str | os.PathLike, configuration: str | None,
             dataset_json: Mapping[str, Any] | str | os.PathLike | None) -> tuple[dict, str, dict]:
    plans = getattr(source, "plans", None)
    if plans is not None:  # an EncoderBundle
        configuration = configuration or source.configuration
        dataset_json = dataset_json if dataset_json is not None else source.dataset_json
    else:
        plans = read_json(source, "plans")
    if dataset_json is None:
        raise PlansError("dataset_json is needed with plans (the model's dataset.json: channel names, file ending)")
    dj = read_json(dataset_json, "dataset.json")
    return dict(plans), nnunet_configuration.check_configuration(plans, configuration), dj


def preprocessing_info(source: PlansSource | Mapping[str, Any] | str | os.PathLike, configuration: str | None = None,
                       dataset_json: Mapping[str, Any] | str | os.PathLike | None = None) -> PreprocessingInfo:
    """Spacing, patch size, normalisation (with intensity statistics) and channel names of a configuration.

    ``source``: an :class:`~nnunet_transfer.encoders.EncoderBundle` (its plans, configuration, dataset.json), or
    plans (a dict or a ``plans.json`` path) with ``configuration`` and ``dataset_json``."""
    plans, configuration, dj = _resolve(source, configuration, dataset_json)
    facts = nnunet_configuration.configuration_facts(plans, configuration, dj, f"plans {plans.get('plans_name')!r}")
    known = {"spacing", "patch_size", "normalization_schemes", "use_mask_for_norm", "preprocessor_name"}
    return PreprocessingInfo(
        configuration=configuration,
        spacing=tuple(facts.spacing),
        patch_size=tuple(facts.patch_size),
        normalization_schemes=tuple(facts.normalization_schemes),
        use_mask_for_norm=tuple(facts.use_mask_for_norm),
        intensity_properties={str(k): dict(v) for k, v in facts.intensity_properties.items()},
        channel_names={str(k): str(v) for k, v in (dj.get("channel_names") or dj.get("modality") or {}).items()},
        transpose_forward=tuple(facts.transpose_forward),
        file_ending=dj.get("file_ending"),
        image_reader_writer=plans.get("image_reader_writer"),
        preprocessor=facts.preprocessor_name,
        extra={k: v for k, v in facts.configuration.items() if k not in known and k != "architecture"},
    )


def preprocess_image(files: str | os.PathLike | Sequence[str | os.PathLike],
                     source: PlansSource | Mapping[str, Any] | str | os.PathLike,
                     configuration: str | None = None,
                     dataset_json: Mapping[str, Any] | str | os.PathLike | None = None,
                     *, return_properties: bool = False) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]:
    """One image preprocessed exactly as nnU-Net preprocesses it for ``configuration``: read with the plans' reader,
    then the configuration's preprocessor's ``run_case`` (transpose, crop to non-zero, normalise, resample).

    ``files``: the image's channel files in the order of the dataset.json ``channel_names`` (``case_0000.nii.gz``,
    ``case_0001.nii.gz``, ...), or one path for a one-channel model. ``source`` as in :func:`preprocessing_info`.
    Returns a float32 array ``(channels, *spatial)`` (and nnU-Net's properties of the case on request: spacing,
    bounding box of the crop, shapes before and after, as its predictor uses them to export a segmentation).
    """
    plans, configuration, dj = _resolve(source, configuration, dataset_json)
    paths = [files] if isinstance(files, str | os.PathLike) else list(files)
    channels = dj.get("channel_names") or dj.get("modality") or {}
    if len(paths) != len(channels):
        raise PlansError(f"{len(paths)} image file(s) given, the model takes {len(channels)} channel(s) "
                         f"({', '.join(f'{k}: {v}' for k, v in channels.items())}), one file each in that order")
    for p in paths:
        if not Path(p).is_file():
            raise PlansError(f"{p}: image file not found")
    data, properties = nnunet_configuration.preprocess_files(paths, plans, configuration, dj)
    return (data, properties) if return_properties else data


def preprocess_array(data: np.ndarray, spacing: Sequence[float],
                     source: PlansSource | Mapping[str, Any] | str | os.PathLike,
                     configuration: str | None = None,
                     dataset_json: Mapping[str, Any] | str | os.PathLike | None = None) -> np.ndarray:
    """An image already in memory, ``(channels, *spatial)`` with ``spacing`` per spatial axis, in the axis order
    nnU-Net's reader gives (SimpleITKIO: z, y, x), preprocessed by the configuration's preprocessor (``run_case_npy``,
    what :func:`preprocess_image` runs after reading). Returns float32 ``(channels, *spatial)``."""
    plans, configuration, dj = _resolve(source, configuration, dataset_json)
    arr = np.asarray(data)
    if arr.ndim != 4 or len(spacing) != 3:
        raise ValueError(f"data must be (channels, z, y, x) with 3 spacings (nnU-Net works on 3d arrays, a 2d image as "
                         f"a single slice), got shape {arr.shape} and spacing {tuple(spacing)}")
    channels = dj.get("channel_names") or dj.get("modality") or {}
    if arr.shape[0] != len(channels):
        raise ValueError(f"data has {arr.shape[0]} channel(s), the model takes {len(channels)} "
                         f"({', '.join(f'{k}: {v}' for k, v in channels.items())})")
    return nnunet_configuration.preprocess_array(arr, spacing, plans, configuration, dj)
