"""Small synthetic datasets in nnU-Net's raw format, for demos, tests and benchmarks.

Each case holds a bright ellipsoid ("organ") with a smaller, brighter blob inside ("lesion") on a noisy
background, so that a few training iterations already learn something measurable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["NESTED_LABELS", "NESTED_REGIONS", "make_dataset", "make_nested_dataset"]

# three nested structures painted 1 (outer shell), 2 (middle shell), 3 (inner core); as labels or as regions
NESTED_LABELS: dict[str, int] = {"background": 0, "outer": 1, "middle": 2, "inner": 3}
NESTED_REGIONS: dict[str, int | list[int]] = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "inner": 3}


def _case(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    num_channels: int,
    label_values: Sequence[int],
) -> tuple[list[np.ndarray], np.ndarray]:
    # coordinates in mm so that the objects keep their physical size whatever the spacing
    zz, yy, xx = np.meshgrid(*[np.arange(s) * sp for s, sp in zip(shape, spacing, strict=True)], indexing="ij")
    extent = np.array(shape) * np.array(spacing)
    centre = extent / 2 + rng.uniform(-0.1, 0.1, 3) * extent
    radii = extent * rng.uniform(0.22, 0.3, 3)
    dist = ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + ((xx - centre[2]) / radii[2]) ** 2
    seg = np.zeros(shape, dtype=np.uint8)
    seg[dist <= 1] = label_values[0]
    if len(label_values) > 1:
        inner = centre + rng.uniform(-0.3, 0.3, 3) * radii
        r2 = radii * 0.4
        d2 = ((zz - inner[0]) / r2[0]) ** 2 + ((yy - inner[1]) / r2[1]) ** 2 + ((xx - inner[2]) / r2[2]) ** 2
        seg[d2 <= 1] = label_values[1]
    images = []
    for c in range(num_channels):
        img = rng.normal(0, 0.3, shape).astype(np.float32)
        img += (seg > 0) * (1.0 + 0.3 * c)
        if len(label_values) > 1:
            img += (seg == label_values[1]) * (1.0 - 0.2 * c)
        images.append(img * 100 + 50 * c)
    return images, seg


def _outer_inner(labels: Mapping[str, int | Sequence[int]]) -> list[int]:
    """Label values painted as (outer ellipsoid, inner blob): "organ" and "lesion" when the map has those names."""
    foreground = {k: int(v) for k, v in labels.items() if not isinstance(v, list | tuple) and int(v) > 0}
    values = sorted(foreground.values())
    inner = foreground.get("lesion", values[1] if len(values) > 1 else None)
    outer = foreground.get("organ", next((v for v in values if v != inner), inner))
    return [v for v in (outer, inner) if v is not None]


def make_dataset(
    raw_root: str | Path,
    dataset_id: int,
    name: str,
    *,
    num_cases: int = 5,
    shape: tuple[int, int, int] = (32, 32, 32),
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    channel_names: Mapping[str, str] | None = None,
    labels: Mapping[str, int | Sequence[int]] | None = None,
    regions_class_order: Sequence[int] | None = None,
    seed: int = 0,
) -> Path:
    """Write a synthetic dataset ``Dataset{id:03d}_{name}`` under ``raw_root`` and return its folder.

    ``shape`` and ``spacing`` are (z, y, x). ``labels`` is nnU-Net's ``dataset.json`` label map; the labels named
    "organ" and "lesion" (otherwise the first two foreground values) are painted as the outer ellipsoid and the
    inner blob, so that a name means the same structure in every dataset made here. Region-based label maps are
    supported together with ``regions_class_order`` (its first two values are painted).
    """

    channel_names = dict(channel_names or {"0": "MR"})
    labels = dict(labels or {"background": 0, "organ": 1, "lesion": 2})
    painted = [int(v) for v in regions_class_order] if regions_class_order is not None else _outer_inner(labels)
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(num_cases):
        images, seg = _case(rng, shape, spacing, len(channel_names), painted[:2])
        _write_case(folder, f"{name.lower()}_{i:03d}", images, seg, spacing)
    dataset_json: dict = {
        "channel_names": channel_names,
        "labels": labels,
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
        "name": name,
    }
    if regions_class_order is not None:
        dataset_json["regions_class_order"] = list(regions_class_order)
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder


def _write_case(folder: Path, case: str, images: Sequence[np.ndarray], seg: np.ndarray,
                spacing: tuple[float, float, float]) -> None:
    import SimpleITK as sitk

    sitk_spacing = tuple(float(s) for s in spacing[::-1])
    for c, img in enumerate(images):
        itk = sitk.GetImageFromArray(img)
        itk.SetSpacing(sitk_spacing)
        sitk.WriteImage(itk, str(folder / "imagesTr" / f"{case}_{c:04d}.nii.gz"))
    itk = sitk.GetImageFromArray(seg)
    itk.SetSpacing(sitk_spacing)
    sitk.WriteImage(itk, str(folder / "labelsTr" / f"{case}.nii.gz"))


def make_nested_dataset(
    raw_root: str | Path,
    dataset_id: int,
    name: str,
    *,
    labels: Mapping[str, int | Sequence[int]] | None = None,
    regions_class_order: Sequence[int] | None = None,
    num_cases: int = 6,
    shape: tuple[int, int, int] = (32, 32, 32),
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    seed: int = 0,
) -> Path:
    """Write ``Dataset{id:03d}_{name}``: three nested ellipsoids, label values 1 (outer shell), 2 (middle shell) and
    3 (inner core), each brighter than the one around it, so a few iterations learn them.

    ``labels`` defaults to :data:`NESTED_REGIONS` (region-based: whole = {1, 2, 3}, core = {2, 3}, inner = {3}) with
    ``regions_class_order`` [1, 2, 3]; pass :data:`NESTED_LABELS` (and no order) for the label-based dataset of the
    same structures. A region map without an order paints each foreground region's smallest value, in map order.
    """
    labels = dict(labels if labels is not None else NESTED_REGIONS)
    regions = any(isinstance(v, list | tuple) and len(v) > 1 for v in labels.values())
    if regions and regions_class_order is None:
        regions_class_order = [min(v) if isinstance(v, list | tuple) else int(v) for k, v in labels.items()
                               if k != "background" and v != 0]
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.arange(s) * sp for s, sp in zip(shape, spacing, strict=True)], indexing="ij")
    extent = np.array(shape) * np.array(spacing)
    for i in range(num_cases):
        centre = extent / 2 + rng.uniform(-0.08, 0.08, 3) * extent
        radii = extent * rng.uniform(0.3, 0.38, 3)
        dist = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
        seg = np.zeros(shape, dtype=np.uint8)
        for value, scale in ((1, 1.0), (2, 0.65), (3, 0.35)):
            seg[dist <= scale**2] = value
        img = seg.astype(np.float32) + rng.normal(0, 0.25, shape).astype(np.float32)
        _write_case(folder, f"{name.lower()}_{i:03d}", [img * 100], seg, spacing)
    dataset_json: dict = {"channel_names": {"0": "MR"}, "labels": labels, "numTraining": num_cases,
                          "file_ending": ".nii.gz", "name": name}
    if regions_class_order is not None:
        dataset_json["regions_class_order"] = [int(v) for v in regions_class_order]
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder
