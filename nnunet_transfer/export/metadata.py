"""The JSON written beside an export: what inference needs that the exported network does not contain.

The export is the network only (logits for one input tensor). Everything around it that nnU-Net's predictor does
comes from here: the input channels and their normalisation (scheme and intensity statistics per channel), the
spacing to resample to, the axis transposition, the patch size of the sliding window, the mirroring axes used for
test-time augmentation, and what the output channels mean (labels or regions).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from nnunet_transfer.core.modules import unwrap_network
from nnunet_transfer.nnunet.configuration import ConfigurationFacts
from nnunet_transfer.nnunet.model_folder import FoldCheckpoint, ModelFolder

__all__ = ["SCHEMA", "WHAT_IT_IS", "inference_metadata", "output_channels", "package_versions", "total_stride"]

SCHEMA = "nnunet-transfer-export/1"
WHAT_IT_IS = ("the network only: one forward pass from a preprocessed input patch (N, C, *spatial) to logits "
              "(N, output channels, *spatial); no preprocessing (transpose, resampling, normalisation), no sliding "
              "window, no test-time mirroring, no softmax/sigmoid, no resampling back: use this file's fields to do "
              "them as nnU-Net's predictor does")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_versions(extra: Sequence[str] = ()) -> dict[str, str | None]:
    """Versions of the packages that made the export (and ``extra`` ones, e.g. onnx)."""
    from nnunet_transfer._version import __version__

    out: dict[str, str | None] = {"nnunet_transfer": __version__, "nnunetv2": _version("nnunetv2"),
                                  "torch": torch.__version__,
                                  "dynamic_network_architectures": _version("dynamic_network_architectures")}
    for name in extra:
        out[name] = _version(name)
    return out


def total_stride(conf: dict[str, Any]) -> list[int] | None:
    """Product of the plans' per-stage strides along each axis (None when the architecture lists none)."""
    strides = (conf.get("architecture") or {}).get("arch_kwargs", {}).get("strides")
    dims = len(conf["patch_size"])
    if not strides:
        return None
    out = [1] * dims
    for s in strides:
        s = [s] * dims if isinstance(s, int) else list(s)
        if len(s) != dims:
            return None
        out = [a * int(b) for a, b in zip(out, s, strict=True)]
    return out


def output_channels(dataset_json: dict[str, Any], facts: ConfigurationFacts) -> dict[str, Any]:
    """What each output channel of the network is, as nnU-Net's LabelManager reads dataset.json."""
    labels = dataset_json.get("labels") or {}
    if facts.has_regions:
        def as_region(v: Any) -> Any:
            return list(v) if isinstance(v, list | tuple) else v

        regions = facts.regions or []
        names = [k for k, v in labels.items() if k != "ignore" and as_region(v) in regions]
        return {"kind": "regions", "names": names, "regions": regions,
                "regions_class_order": list(dataset_json.get("regions_class_order") or []),
                "activation": "sigmoid per channel",
                "to_segmentation": "each channel i with sigmoid > 0.5 paints label regions_class_order[i], in "
                                   "channel order (later channels overwrite earlier ones)"}
    by_value = {int(v): k for k, v in labels.items() if k != "ignore" and not isinstance(v, list | tuple)}
    return {"kind": "labels", "names": [by_value.get(i, str(i)) for i in range(facts.num_outputs)],
            "activation": "softmax over channels", "to_segmentation": "argmax over channels is the label value"}


def inference_metadata(folder: ModelFolder, checkpoint: FoldCheckpoint, network: nn.Module, *, fmt: str,
                       file_name: str, dynamic_spatial: bool, stride: list[int] | None,
                       export_info: dict[str, Any], verification: dict[str, Any],
                       versions: dict[str, str | None], built_by: str | None = None) -> dict[str, Any]:
    """The sidecar JSON's content (see the module docstring). ``built_by``: the trainer that built the network when
    it is not the checkpoint's (``--trainer``), recorded as ``source.network_built_by``."""
    facts = folder.facts()
    dj = folder.dataset_json
    channel_names = dj.get("channel_names") or dj.get("modality") or {}
    normalization = [
        {"channel": str(i), "name": channel_names.get(str(i)), "scheme": scheme,
         "use_mask_for_norm": facts.use_mask_for_norm[i] if i < len(facts.use_mask_for_norm) else False,
         "intensity_properties": facts.intensity_properties.get(str(i))}
        for i, scheme in enumerate(facts.normalization_schemes)
    ]
    net = unwrap_network(network)
    spatial = len(facts.patch_size)
    axes = ["z", "y", "x"][-spatial:] if spatial <= 3 else [f"d{i}" for i in range(spatial)]
    extra = {k: v for k, v in export_info.items() if k not in ("input_name", "output_name", "input_dims",
                                                                "output_dims")}
    return {
        "schema": SCHEMA,
        "what": WHAT_IT_IS,
        "export": {
            "file": file_name,
            "format": fmt,
            "input": {"name": export_info.get("input_name", "input"), "layout": ["N", "C", *axes],
                      "dtype": "float32", "dims": export_info.get("input_dims")},
            "output": {"name": export_info.get("output_name", "logits"), "layout": ["N", "C", *axes],
                       "dims": export_info.get("output_dims")},
            "dynamic_batch": True,
            "dynamic_spatial": dynamic_spatial,
            "spatial_multiple_of": stride if dynamic_spatial else None,
            **extra,
        },
        "source": {
            "model_folder": str(folder.path.resolve()),
            "dataset": folder.plans.get("dataset_name"),
            "trainer": checkpoint.trainer_name,
            "plans": folder.plans_identifier,
            "configuration": folder.configuration,
            "fold": checkpoint.fold,
            "checkpoint": str(checkpoint.path.resolve()),
            "checkpoint_sha256": checkpoint.sha256,
            "epoch": checkpoint.epoch,
            **({"network_built_by": built_by} if built_by else {}),
        },
        "network": {
            "class": f"{type(net).__module__}.{type(net).__qualname__}",
            "input_channels": facts.num_input_channels,
            "output_channels": facts.num_outputs,
            "deep_supervision": False,
            "total_stride": stride,
        },
        "channel_names": channel_names,
        "spacing": facts.spacing,
        "patch_size": facts.patch_size,
        "normalization": normalization,
        "transpose_forward": facts.transpose_forward,
        "transpose_backward": facts.transpose_backward,
        "inference_allowed_mirroring_axes": checkpoint.mirroring_axes,
        "labels": dj.get("labels"),
        "regions_class_order": dj.get("regions_class_order"),
        "ignore_label": facts.ignore_label,
        "output_channels": output_channels(dj, facts),
        "previous_stage": facts.configuration.get("previous_stage"),
        "file_ending": dj.get("file_ending"),
        "image_reader_writer": folder.plans.get("image_reader_writer"),
        "versions": versions,
        "verification": verification,
    }
