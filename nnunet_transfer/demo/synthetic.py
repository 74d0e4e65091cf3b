"""Small synthetic datasets in nnU-Net's raw format, for demos, tests and benchmarks.

Each case holds a bright ellipsoid ("organ") with a smaller, brighter blob inside ("lesion") on a noisy
background, so that a few training iterations already learn something measurable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["make_dataset"]


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
    import SimpleITK as sitk

    channel_names = dict(channel_names or {"0": "MR"})
    labels = dict(labels or {"background": 0, "organ": 1, "lesion": 2})
    painted = [int(v) for v in regions_class_order] if regions_class_order is not None else _outer_inner(labels)
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sitk_spacing = tuple(float(s) for s in spacing[::-1])
    for i in range(num_cases):
        images, seg = _case(rng, shape, spacing, len(channel_names), painted[:2])
        case = f"{name.lower()}_{i:03d}"
        for c, img in enumerate(images):
            itk = sitk.GetImageFromArray(img)
            itk.SetSpacing(sitk_spacing)
            sitk.WriteImage(itk, str(folder / "imagesTr" / f"{case}_{c:04d}.nii.gz"))
        itk = sitk.GetImageFromArray(seg)
        itk.SetSpacing(sitk_spacing)
        sitk.WriteImage(itk, str(folder / "labelsTr" / f"{case}.nii.gz"))
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
