"""Step 3 of a plans transfer: compute the target's plans from the source's (nothing written but the fingerprint)."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nnunet_transfer.core.schedules.recipes import RECIPE_PLANS_KEY
from nnunet_transfer.errors import PlansError, TransferError
from nnunet_transfer.nnunet.plans.diff import costs, diff, short
from nnunet_transfer.nnunet.plans.source import SourcePlans
from nnunet_transfer.nnunet.plans.target import analyse_target, locate_raw_target

__all__ = ["IntensityStats", "PlansTransfer", "SpacingChoice", "transfer_plans"]

IntensityStats = Literal["target", "source"]
SpacingChoice = Literal["source", "pretrain", "target"]


@dataclass
class PlansTransfer:
    """The computed transfer: new plans for the target, and what changed (nothing is written yet)."""

    source: SourcePlans
    target_name: str
    target_folder: Path  # <preprocessed root>/<target_name>
    identifier: str
    configurations: list[str]
    plans: dict[str, Any]
    target_dataset_json: dict[str, Any]
    diffs: list[tuple[str, Any, Any]] = field(default_factory=list)
    costs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw_folder: Path | None = None  # <raw root>/<target_name>

    @property
    def plans_file(self) -> Path:
        return self.target_folder / f"{self.identifier}.json"

    def describe(self) -> str:
        """The plans diff (source vs new) and what the choice costs, for humans."""
        lines = [f"plans transfer: {self.source.description} -> {self.target_name}, plans {self.identifier!r}, "
                 f"configurations {self.configurations}"]
        width = max((len(p) for p, _, _ in self.diffs), default=0)
        for path, old, new in self.diffs:
            lines.append(f"  {path.ljust(width)}  {short(old)}  ->  {short(new)}")
        lines.extend(f"cost: {c}" for c in self.costs)
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _resolved_configuration(plans: dict[str, Any], name: str) -> dict[str, Any]:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    conf = copy.deepcopy(PlansManager(plans).get_configuration(name).configuration)
    if conf.get("previous_stage") or conf.get("next_stage"):
        raise PlansError(f"configuration {name!r} is part of a cascade; transfer 2d or 3d_fullres configurations")
    conf.pop("inherits_from", None)
    return conf


def _divisor(conf: dict[str, Any]) -> list[int]:
    kwargs = conf["architecture"]["arch_kwargs"]
    dims = len(conf["patch_size"])
    if kwargs.get("patch_embed_size") is not None:  # Primus: the patch embedding's size
        return [int(p) for p in kwargs["patch_embed_size"]]
    strides = kwargs.get("strides")
    if strides is None:
        return [1] * dims
    out = [1] * dims
    for s in strides:
        s = [s] * dims if isinstance(s, int) else s
        out = [a * b for a, b in zip(out, s, strict=True)]
    return out


def _override(conf: dict[str, Any], c: str, patch_size: Sequence[int] | None, spacing: Sequence[float] | None,
              batch_size: int | None = None) -> None:
    dims = len(conf["patch_size"])
    if patch_size is not None:
        if len(patch_size) != dims:
            raise PlansError(f"--patch-size {list(patch_size)} has {len(patch_size)} values; configuration {c!r} "
                             f"is {dims}d")
        div = _divisor(conf)
        if any(p <= 0 or p % d for p, d in zip(patch_size, div, strict=True)):
            raise PlansError(f"--patch-size {list(patch_size)} for {c!r}: each axis must be a positive multiple of "
                             f"the network's total downsampling {div} (its strides, or a Primus's patch embedding); "
                             "the network would not build or its skip connections would not line up")
        conf["patch_size"] = [int(p) for p in patch_size]
        if "input_shape" in conf["architecture"]["arch_kwargs"]:  # Primus: its positional embedding's grid
            conf["architecture"]["arch_kwargs"]["input_shape"] = [int(p) for p in patch_size]
    if batch_size is not None:
        if batch_size < 1:
            raise PlansError(f"--batch-size {batch_size}: must be at least 1")
        conf["batch_size"] = int(batch_size)
    if spacing is not None:
        if len(spacing) != dims or any(s <= 0 for s in spacing):
            raise PlansError(f"--spacing {list(spacing)} for {c!r}: needs {dims} positive values")
        conf["spacing"] = [float(s) for s in spacing]


def _check_builds(plans: dict[str, Any], confs: Sequence[str], dataset_json: dict[str, Any],
                  trainer: str | type | None = None) -> None:
    """Build each configuration's network for the target as ``trainer`` builds it (on the meta device: no memory,
    no time) and run it on one patch, so that a patch or spacing override that breaks the network is an error
    before anything is written."""
    import torch
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_transfer.nnunet.networks import build_network, find_trainer_class

    trainer_class = find_trainer_class(trainer)  # resolved (modules imported) outside the meta device
    for c in confs:
        patch = plans["configurations"][c]["patch_size"]
        try:
            pm = PlansManager(plans)
            channels = determine_num_input_channels(pm, pm.get_configuration(c), dataset_json)
            with torch.device("meta"):
                net = build_network(plans, c, dataset_json, trainer=trainer_class)
                with torch.no_grad():
                    net(torch.zeros(1, channels, *patch))
        except TransferError:
            raise
        except Exception as e:
            raise PlansError(f"configuration {c!r}: the network does not build or run on patch {patch} for the "
                             f"target: {type(e).__name__}: {e}") from None


def transfer_plans(
    source: SourcePlans,
    target: str | int,
    identifier: str,
    configurations: Sequence[str] | None = None,
    *,
    intensity_stats: IntensityStats = "target",
    patch_size: Sequence[int] | None = None,
    spacing: Sequence[float] | SpacingChoice | None = None,
    batch_size: int | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    num_processes: int = 2,
    raw: str | os.PathLike | None = None,
    preprocessed: str | os.PathLike | None = None,
    trainer: str | type | None = None,
) -> PlansTransfer:
    """Compute target plans under ``identifier`` from ``source`` (see the package docstring).

    ``raw`` / ``preprocessed``: nnU-Net's data roots of the target (default: ``$nnUNet_raw`` /
    ``$nnUNet_preprocessed``, read now; the environment is never changed). ``trainer``: the trainer whose network
    must build for the target (default the source's, else nnU-Net's ``nnUNetTrainer``). ``spacing``: values in mm,
    or ``"source"`` / ``"pretrain"`` (the source's, the default) or ``"target"`` (nnU-Net's own full-resolution spacing
    for the target). ``batch_size`` overrides the source's. Writes nothing but, when ``dry_run`` is False,
    the target's fingerprint (nnU-Net's ``dataset_fingerprint.json``) if missing and, as nnU-Net's planner does, a
    ``splits_final.json`` found beside the raw data.
    """
    if not identifier or "/" in identifier or identifier.endswith(".json"):
        raise PlansError(f"plans identifier {identifier!r}: give a bare name such as nnUNetPlans_transfer")
    if intensity_stats not in ("target", "source"):
        raise PlansError(f"intensity_stats must be 'target' or 'source', not {intensity_stats!r}")
    if isinstance(spacing, str) and spacing not in ("source", "pretrain", "target"):
        raise PlansError(f"--spacing {spacing!r}: give 'pretrain' (or 'source'), 'target' or values in mm")
    spacing_values = None if isinstance(spacing, str) else spacing
    trainer = trainer if trainer is not None else source.trainer
    location, target_dj = locate_raw_target(target, raw=raw, preprocessed=preprocessed)
    name = location.name
    plans_file = location.preprocessed / f"{identifier}.json"
    if plans_file.exists() and not overwrite:
        raise PlansError(f"{plans_file}: plans {identifier!r} exist already; choose another identifier or pass "
                         "--overwrite (its preprocessed data is then rebuilt)")
    src = source.plans
    available = sorted(src["configurations"])
    confs = list(configurations or source.configurations)
    unknown = [c for c in confs if c not in available]
    if unknown:
        raise PlansError(f"configuration(s) {unknown} not in the source plans (available: {available})")
    resolved = {c: _resolved_configuration(src, c) for c in confs}

    n_channels = len(target_dj.get("channel_names", target_dj.get("modality", {})))
    src_channels = len(src.get("foreground_intensity_properties_per_channel", {})) or (source.input_channels or 0)
    if intensity_stats == "source" and source.normalization is not None:
        raise PlansError(f"intensity_stats='source': {source.description} carries no intensity statistics (its "
                         f"channels are normalised by {source.normalization}); use 'target'")
    if intensity_stats == "source" and src_channels != n_channels:
        raise PlansError(f"intensity_stats='source' needs equal channel counts (source {src_channels}, target "
                         f"{n_channels}); use 'target'")

    new = copy.deepcopy(src)
    new["dataset_name"] = name
    new["plans_name"] = identifier
    new.pop(RECIPE_PLANS_KEY, None)  # the source's recipe is not the target's (the trainer would read it)
    new["configurations"] = {}
    for c, conf in resolved.items():
        conf = copy.deepcopy(conf)
        conf["data_identifier"] = f"{identifier}_{c}"
        _override(conf, c, patch_size, spacing_values, batch_size)
        new["configurations"][c] = conf

    # the network must still build for the target (channels, labels) and run on the patch size
    _check_builds(new, confs, target_dj, trainer)

    facts = analyse_target(location, dry_run=dry_run, num_processes=num_processes)
    fingerprint = facts.fingerprint
    new["image_reader_writer"] = facts.reader_writer
    tf = list(src.get("transpose_forward", [0, 1, 2]))
    spacings = np.array(fingerprint["spacings"], dtype=float)
    shapes = np.array(fingerprint["shapes_after_crop"], dtype=float)
    new["original_median_spacing_after_transp"] = [float(x) for x in np.median(spacings, 0)[tf]]
    new["original_median_shape_after_transp"] = [round(float(x)) for x in np.median(shapes, 0)[tf]]
    if intensity_stats == "target":
        new["foreground_intensity_properties_per_channel"] = fingerprint["foreground_intensity_properties_per_channel"]
    # (with "source", the source's statistics stay: allowed above only for equal channel counts)
    for c in confs:
        conf = new["configurations"][c]
        if spacing == "target":
            conf["spacing"] = [float(x) for x in np.asarray(facts.own_spacing)[tf]]
        if source.normalization is not None:  # nnssl: every channel as in pretraining; the mask by nnU-Net's rule
            mask = float(fingerprint.get("median_relative_size_after_cropping", 1.0)) < 0.75
            conf["normalization_schemes"] = [source.normalization] * n_channels
            conf["use_mask_for_norm"] = [mask] * n_channels
        else:
            conf["normalization_schemes"] = list(facts.normalization_schemes)
            conf["use_mask_for_norm"] = list(facts.use_mask_for_norm)
        if len(conf["patch_size"]) == 3:
            conf["median_image_size_in_voxels"] = [
                float(x) for x in np.median(shapes * spacings / np.array(conf["spacing"])[np.argsort(tf)], 0)[tf]]

    result = PlansTransfer(source, name, location.preprocessed, identifier, confs, new, target_dj,
                           raw_folder=location.raw)
    with_resolved = copy.deepcopy(src)
    with_resolved["configurations"] = resolved
    result.diffs = diff(with_resolved, new)
    result.costs = costs(new, confs, shapes, spacings, facts.own_spacing, tf)
    if "CTNormalization" in facts.normalization_schemes:
        result.notes.append(f"CT normalisation uses the {intensity_stats}'s intensity statistics")
    elif intensity_stats == "source":
        result.notes.append("intensity statistics kept from the source (only CT normalisation uses them)")
    if source.checkpoint is not None and getattr(source.checkpoint, "nnssl", None) is not None:
        for c in confs:  # said even when left as they are: the defaults are choices too
            conf = new["configurations"][c]
            result.notes.append(
                f"{c}: patch size {conf['patch_size']} ("
                + ("--patch-size" if patch_size is not None else "the checkpoint's recommended downstream patch size")
                + f"), batch size {conf['batch_size']} ("
                + ("--batch-size" if batch_size is not None else "the default for nnssl checkpoints") + ")")
    if n_channels != src_channels and src_channels:
        result.notes.append(f"input channels {src_channels} -> {n_channels}: the first convolution will be adapted")
    return result
