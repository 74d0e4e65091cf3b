"""Plans transfer: target-dataset plans that build the pretrained network, from a checkpoint or a source's plans.

What is kept from the source: the network architecture (so that the weights fit), the patch size, spacing, batch
size, resampling and the axis transposition of each selected configuration. What is the target's: dataset name,
reader/writer, data identifiers, per-channel normalisation schemes (and their use of the nonzero mask), the
intensity statistics CT normalisation needs (``intensity_stats="target"``, the default, from the target's
fingerprint; ``"source"`` keeps the source's, possible only with equal channel counts), the median shape and spacing,
and the channel count (the network's input channels come from the target's dataset.json).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nnunet_transfer.core.io import write_json_atomic
from nnunet_transfer.errors import PlansError, TransferError

__all__ = [
    "PlansTransfer",
    "SourcePlans",
    "check_transfer",
    "preprocess_transfer",
    "read_source_plans",
    "transfer_plans",
    "write_plans",
]

IntensityStats = Literal["target", "source"]


@dataclass
class SourcePlans:
    """Plans of the pretrained model and where they came from."""

    plans: dict[str, Any]
    description: str
    configurations: list[str]  # the default selection
    checkpoint: Any = None  # the SourceCheckpoint, when the plans came from one
    dataset_json: dict[str, Any] | None = None


@dataclass
class PlansTransfer:
    """The computed transfer: new plans for the target, and what changed (nothing is written yet)."""

    source: SourcePlans
    target_name: str
    target_folder: Path
    identifier: str
    configurations: list[str]
    plans: dict[str, Any]
    target_dataset_json: dict[str, Any]
    diffs: list[tuple[str, Any, Any]] = field(default_factory=list)
    costs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def plans_file(self) -> Path:
        return self.target_folder / f"{self.identifier}.json"

    def describe(self) -> str:
        """The plans diff (source vs new) and what the choice costs, for humans."""
        lines = [f"plans transfer: {self.source.description} -> {self.target_name}, plans {self.identifier!r}, "
                 f"configurations {self.configurations}"]
        width = max((len(p) for p, _, _ in self.diffs), default=0)
        for path, old, new in self.diffs:
            lines.append(f"  {path.ljust(width)}  {_short(old)}  ->  {_short(new)}")
        lines.extend(f"cost: {c}" for c in self.costs)
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _short(value: Any, limit: int = 90) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_source_plans(
    source: str | os.PathLike,
    source_plans_identifier: str = "nnUNetPlans",
    allow_globals: Sequence[str] = (),
    trust_checkpoint: bool = False,
) -> SourcePlans:
    """Plans from a checkpoint (``init_args.plans``), a plans JSON file, or a source dataset's preprocessed folder."""
    path = Path(source)
    if path.is_file() and path.suffix == ".json":
        try:
            plans = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise PlansError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(plans, dict) or "configurations" not in plans:
            raise PlansError(f"{path}: not an nnU-Net plans file (no 'configurations')")
        dj = path.parent / "dataset.json"
        dataset_json = json.loads(dj.read_text()) if dj.is_file() else None
        return SourcePlans(plans, str(path), sorted(plans["configurations"]), None, dataset_json)
    if path.exists() or path.suffix in (".pth", ".pt", ".ckpt", ".safetensors"):
        from nnunet_transfer.core.loading.checkpoint import read_checkpoint

        ckpt = read_checkpoint(path, allow_globals=allow_globals, trust_checkpoint=trust_checkpoint)
        if ckpt.plans is None or "configurations" not in ckpt.plans:
            raise PlansError(
                f"{path}: the checkpoint carries no nnU-Net plans (init_args.plans); it was not written by an nnU-Net "
                "trainer. Give the source dataset or its plans file instead (--from DATASET or --from PLANS.json)"
            )
        confs = [ckpt.configuration] if ckpt.configuration else sorted(ckpt.plans["configurations"])
        return SourcePlans(ckpt.plans, str(path), confs, ckpt, ckpt.dataset_json)
    from nnunet_transfer.nnunet.datasets import find_target_dataset

    ds = find_target_dataset(str(source), source_plans_identifier)
    return SourcePlans(ds.plans, f"{ds.name} ({ds.plans_file.name})", sorted(ds.plans["configurations"]), None,
                       ds.dataset_json)


def _resolved_configuration(plans: dict[str, Any], name: str) -> dict[str, Any]:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    conf = copy.deepcopy(PlansManager(plans).get_configuration(name).configuration)
    if conf.get("previous_stage") or conf.get("next_stage"):
        raise PlansError(f"configuration {name!r} is part of a cascade; transfer 2d or 3d_fullres configurations")
    conf.pop("inherits_from", None)
    return conf


def _raw_dataset(target: str | int) -> tuple[str, Path, dict[str, Any]]:
    raw = os.environ.get("nnUNet_raw")
    pre = os.environ.get("nnUNet_preprocessed")
    if not raw or not pre:
        raise PlansError("nnUNet_raw and nnUNet_preprocessed must be set")
    from nnunet_transfer.nnunet.datasets import dataset_name

    name = dataset_name(target)
    if name is None:
        raise PlansError(f"target dataset {target!r}: no raw data in nnUNet_raw ({raw})")
    folder = Path(raw) / name
    if not (folder / "dataset.json").is_file():
        raise PlansError(f"target dataset {name}: no raw data ({folder / 'dataset.json'} missing); the target's own "
                         "images are needed for its fingerprint and preprocessing")
    return name, folder, json.loads((folder / "dataset.json").read_text())


def _divisor(conf: dict[str, Any]) -> list[int]:
    strides = conf["architecture"]["arch_kwargs"].get("strides")
    dims = len(conf["patch_size"])
    if strides is None:
        return [1] * dims
    out = [1] * dims
    for s in strides:
        s = [s] * dims if isinstance(s, int) else s
        out = [a * b for a, b in zip(out, s, strict=True)]
    return out


@contextmanager
def _temporary_preprocessed(enabled: bool, dataset_name: str) -> Iterator[None]:
    """With ``enabled``, point nnUNet_preprocessed at a temporary folder holding a copy of the dataset's fingerprint
    (if any): a dry run then writes nothing into the real one."""
    if not enabled:
        yield
        return
    old = os.environ.get("nnUNet_preprocessed")
    with tempfile.TemporaryDirectory() as tmp:
        fingerprint = Path(old or "", dataset_name, "dataset_fingerprint.json")
        if old and fingerprint.is_file():
            (Path(tmp) / dataset_name).mkdir()
            shutil.copy(fingerprint, Path(tmp) / dataset_name / fingerprint.name)
        os.environ["nnUNet_preprocessed"] = tmp
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("nnUNet_preprocessed", None)
            else:
                os.environ["nnUNet_preprocessed"] = old


def _fingerprint_and_planner(name: str, num_processes: int):
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    fp = Path(os.environ["nnUNet_preprocessed"]) / name / "dataset_fingerprint.json"
    if not fp.is_file():
        from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset
        from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

        extract_fingerprint_dataset(convert_dataset_name_to_id(name), num_processes=num_processes, clean=False,
                                    verbose=False, show_progress_bar=False)
    return ExperimentPlanner(name, suppress_transpose=False)


def transfer_plans(
    source: SourcePlans,
    target: str | int,
    identifier: str,
    configurations: Sequence[str] | None = None,
    *,
    intensity_stats: IntensityStats = "target",
    patch_size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    num_processes: int = 2,
) -> PlansTransfer:
    """Compute target plans under ``identifier`` from ``source`` (see module docstring). Writes nothing but, when it
    is missing and ``dry_run`` is False, the target's fingerprint (nnU-Net's ``dataset_fingerprint.json``)."""
    if not identifier or "/" in identifier or identifier.endswith(".json"):
        raise PlansError(f"plans identifier {identifier!r}: give a bare name such as nnUNetPlans_transfer")
    if intensity_stats not in ("target", "source"):
        raise PlansError(f"intensity_stats must be 'target' or 'source', not {intensity_stats!r}")
    name, raw_folder, target_dj = _raw_dataset(target)
    target_folder = Path(os.environ["nnUNet_preprocessed"]) / name
    plans_file = target_folder / f"{identifier}.json"
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
    src_channels = len(src.get("foreground_intensity_properties_per_channel", {}))
    if intensity_stats == "source" and src_channels != n_channels:
        raise PlansError(f"intensity_stats='source' needs equal channel counts (source {src_channels}, target "
                         f"{n_channels}); use 'target'")

    new = copy.deepcopy(src)
    new["dataset_name"] = name
    new["plans_name"] = identifier
    new["configurations"] = {}
    for c, conf in resolved.items():
        conf = copy.deepcopy(conf)
        conf["data_identifier"] = f"{identifier}_{c}"
        dims = len(conf["patch_size"])
        if patch_size is not None:
            if len(patch_size) != dims:
                raise PlansError(f"--patch-size {list(patch_size)} has {len(patch_size)} values; configuration {c!r} "
                                 f"is {dims}d")
            div = _divisor(conf)
            if any(p <= 0 or p % d for p, d in zip(patch_size, div, strict=True)):
                raise PlansError(f"--patch-size {list(patch_size)} for {c!r}: each axis must be a positive multiple of "
                                 f"the network's total downsampling {div} (its strides); the network would not build "
                                 "or its skip connections would not line up")
            conf["patch_size"] = [int(p) for p in patch_size]
        if spacing is not None:
            if len(spacing) != dims or any(s <= 0 for s in spacing):
                raise PlansError(f"--spacing {list(spacing)} for {c!r}: needs {dims} positive values")
            conf["spacing"] = [float(s) for s in spacing]
        new["configurations"][c] = conf

    # the network must still build for the target (channels, labels) and run on the patch size
    _check_builds(new, confs, target_dj)

    with _temporary_preprocessed(dry_run, name):
        planner = _fingerprint_and_planner(name, num_processes)
        fingerprint = planner.dataset_fingerprint
        norm, mask = planner.determine_normalization_scheme_and_whether_mask_is_used_for_norm()
        own_spacing = planner.determine_fullres_target_spacing()
        from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
        from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

        files = get_filenames_of_train_images_and_targets(str(raw_folder), target_dj)
        example = next(iter(files.values()))["images"][0]
        rw = determine_reader_writer_from_dataset_json(target_dj, example, allow_nonmatching_filename=True,
                                                       verbose=False)
    new["image_reader_writer"] = rw.__name__
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
        conf["normalization_schemes"] = list(norm)
        conf["use_mask_for_norm"] = [bool(m) for m in mask]
        if len(conf["patch_size"]) == 3:
            conf["median_image_size_in_voxels"] = [
                float(x) for x in np.median(shapes * spacings / np.array(conf["spacing"])[np.argsort(tf)], 0)[tf]]

    result = PlansTransfer(source, name, target_folder, identifier, confs, new, target_dj)
    result.diffs = _diff(_with_resolved(src, resolved), new)
    result.costs = _costs(new, confs, shapes, spacings, own_spacing, tf)
    if "CTNormalization" in norm:
        result.notes.append(f"CT normalisation uses the {intensity_stats}'s intensity statistics")
    elif intensity_stats == "source":
        result.notes.append("intensity statistics kept from the source (only CT normalisation uses them)")
    if n_channels != src_channels and src_channels:
        result.notes.append(f"input channels {src_channels} -> {n_channels}: the first convolution will be adapted")
    return result


def _with_resolved(plans: dict[str, Any], resolved: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(plans)
    out["configurations"] = resolved
    return out


def _check_builds(plans: dict[str, Any], confs: Sequence[str], dataset_json: dict[str, Any]) -> None:
    """Build each configuration's network for the target (on the meta device: no memory, no time) and run it on
    one patch, so that a patch or spacing override that breaks the network is an error before anything is written."""
    import torch
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_transfer.nnunet.networks import build_network

    for c in confs:
        patch = plans["configurations"][c]["patch_size"]
        try:
            pm = PlansManager(plans)
            channels = determine_num_input_channels(pm, pm.get_configuration(c), dataset_json)
            with torch.device("meta"):
                net = build_network(plans, c, dataset_json)
                with torch.no_grad():
                    net(torch.zeros(1, channels, *patch))
        except TransferError:
            raise
        except Exception as e:
            raise PlansError(f"configuration {c!r}: the network does not build or run on patch {patch} for the "
                             f"target: {type(e).__name__}: {e}") from None


_SUMMARISED = {"foreground_intensity_properties_per_channel"}


def _diff(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    if path in _SUMMARISED and old != new:
        def summary(v: Any) -> str:
            return f"<statistics of {len(v)} channel(s)>" if isinstance(v, dict) else str(v)

        return [(path, summary(old) + " (source)", summary(new) + " (target)")]
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in list(old) + [k for k in new if k not in old]:
            out.extend(_diff(old.get(k, "<absent>"), new.get(k, "<absent>"), f"{path}.{k}" if path else str(k)))
        return out
    return [] if old == new else [(path, old, new)]


def _costs(plans: dict[str, Any], confs: Sequence[str], shapes: np.ndarray, spacings: np.ndarray,
           own_spacing: np.ndarray, tf: list[int]) -> list[str]:
    out = []
    back = np.argsort(tf)
    for c in confs:
        conf = plans["configurations"][c]
        if len(conf["spacing"]) != 3:
            out.append(f"{c}: 2d slices at {conf['spacing']} mm in-plane")
            continue
        new_sp = np.array(conf["spacing"])[back]  # into the images' own axis order
        with_new = np.median(shapes * spacings / new_sp, 0)
        with_own = np.median(shapes * spacings / own_spacing, 0)
        ratio = float(np.prod(with_new) / np.prod(with_own))
        fmt = "x".join
        out.append(
            f"{c}: median case {fmt(str(round(float(x))) for x in with_new)} voxels at the transferred spacing "
            f"{[round(float(s), 3) for s in new_sp]} mm vs {fmt(str(round(float(x))) for x in with_own)} at the "
            f"target's own {[round(float(s), 3) for s in own_spacing]} mm: x{ratio:.2f} voxels per case"
        )
    return out


def write_plans(transfer: PlansTransfer, overwrite: bool = False) -> Path:
    """Write the new plans file (and the target's dataset.json beside it, as nnU-Net does). Never overwrites
    existing plans unless ``overwrite``; then the old preprocessed data of those configurations is removed."""
    path = transfer.plans_file
    if path.exists() and not overwrite:
        raise PlansError(f"{path}: exists already; pass --overwrite to replace it")
    transfer.target_folder.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for c in transfer.configurations:
            stale = transfer.target_folder / transfer.plans["configurations"][c]["data_identifier"]
            if stale.is_dir():
                shutil.rmtree(stale)
    write_json_atomic(path, transfer.plans, indent=4)
    dj = transfer.target_folder / "dataset.json"
    if not dj.exists():
        dj.write_text(json.dumps(transfer.target_dataset_json, indent=4))
    return path


def preprocess_transfer(transfer: PlansTransfer, num_processes: int = 2) -> None:
    """Preprocess the target with the new plans through nnU-Net's own preprocessing, then check the result trains:
    one dataset format per folder and every training case present."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id

    preprocess_dataset(convert_dataset_name_to_id(transfer.target_name), transfer.identifier,
                       transfer.configurations, [num_processes], verbose=False, show_progress_bar=False)
    n_cases = int(transfer.target_dataset_json.get("numTraining", 0))
    for c in transfer.configurations:
        folder = transfer.target_folder / transfer.plans["configurations"][c]["data_identifier"]
        try:
            cls = infer_dataset_class(str(folder))
            ids = cls.get_identifiers(str(folder))
        except Exception as e:
            raise PlansError(f"{folder}: preprocessing left a folder nnU-Net cannot read ({e})") from None
        if n_cases and len(ids) != n_cases:
            raise PlansError(f"{folder}: {len(ids)} preprocessed cases, expected {n_cases}")


def check_transfer(transfer: PlansTransfer, min_coverage: float = 0.5) -> list[tuple[str, Any]]:
    """The load the fine-tune would get, per configuration: ``[(configuration, LoadReport)]`` (dry runs).

    From a checkpoint: its weights against the network the new plans build for the target. From plans: the
    network the source plans build for the source (needs its dataset.json) against the target's.
    """
    from nnunet_transfer.core.loading.checkpoint import SourceCheckpoint
    from nnunet_transfer.core.loading.loader import LoadOptions, plan_load
    from nnunet_transfer.nnunet.networks import build_network

    src = transfer.source
    options = LoadOptions(min_coverage=min_coverage)
    results = []
    ckpt = src.checkpoint
    for c in transfer.configurations:
        if ckpt is None:
            if src.dataset_json is None:
                transfer.notes.append(f"{c}: no check: the source's dataset.json is not beside its plans")
                continue
            source_net = build_network(src.plans, c, src.dataset_json)
            source = SourceCheckpoint(Path(f"<network of {src.description}, {c}>"), "in-memory", "",
                                      source_net.state_dict(), {"init_args": {"dataset_json": src.dataset_json}})
        elif ckpt.configuration not in (None, c):
            continue
        else:
            source = ckpt
        network = build_network(transfer.plans, c, transfer.target_dataset_json)
        report, _ = plan_load(network, source, transfer.target_dataset_json.get("labels"), options)
        results.append((c, report))
    return results
