"""Does the installed nnU-Net ensemble region-based predictions correctly? A tiny synthetic check for ``doctor``.

Region-based models (sigmoid heads) save *probabilities* (the sigmoid applied once) in their ``.npz`` files;
``nnUNetv2_ensemble`` and ``nnUNetv2_find_best_configuration`` average them and threshold each region at 0.5 in
``regions_class_order``. Applying the sigmoid again to the averaged probabilities (a bug nnU-Net had before 2.7)
maps every probability in [0, 1] to [0.5, 0.73]: every voxel becomes foreground of every region, and Dice collapses.

:func:`check_region_ensembling` runs the installed nnU-Net's own code on a 3-region case: ``LabelManager``'s
inference non-linearity (logits in, probabilities out: the sigmoid once) and ``nnunetv2.ensembling.ensemble.
merge_files`` (two members' ``.npz``/``.pkl`` in, a segmentation file out, as ``nnUNetv2_ensemble`` writes it). The
result is compared with what the probabilities mean; a difference is named (the non-linearity applied twice, a
softmax, an argmax instead of region thresholds) when it matches one of those known failures.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["REGIONS", "REGIONS_CLASS_ORDER", "check_region_ensembling"]

REGIONS: dict[str, Any] = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "inner": 3}
REGIONS_CLASS_ORDER = [1, 2, 3]


def _case(shape: tuple[int, int, int] = (5, 9, 9)) -> tuple[np.ndarray, np.ndarray]:
    """Two members' region probabilities (each the sigmoid of its logits), nested whole > core > inner, with
    voxels where the members disagree and the average decides."""
    rng = np.random.default_rng(0)
    z = np.linspace(-1, 1, shape[0])[:, None, None]
    y = np.linspace(-1, 1, shape[1])[None, :, None]
    x = np.linspace(-1, 1, shape[2])[None, None, :]
    r = np.sqrt(z**2 + y**2 + x**2)
    members = []
    for shift in (-0.08, 0.08):
        logits = np.stack([(0.9 - r + shift) * 12, (0.6 - r + shift) * 12, (0.3 - r + shift) * 12])
        logits += rng.normal(0, 0.3, logits.shape)
        members.append((1 / (1 + np.exp(-logits))).astype(np.float32))
    return members[0], members[1]


def _paint(probabilities: np.ndarray, order: list[int]) -> np.ndarray:
    seg = np.zeros(probabilities.shape[1:], dtype=np.uint8)
    for i, value in enumerate(order):
        seg[probabilities[i] > 0.5] = value
    return seg


def _name_failure(got: np.ndarray, average: np.ndarray) -> str:
    sigmoid = 1 / (1 + np.exp(-average))
    if np.array_equal(got, _paint(sigmoid, REGIONS_CLASS_ORDER)):
        return "the sigmoid is applied a second time to the averaged probabilities (double sigmoid)"
    exp = np.exp(average - average.max(0, keepdims=True))
    if np.array_equal(got, _paint(exp / exp.sum(0, keepdims=True), REGIONS_CLASS_ORDER)):
        return "a softmax is applied to the averaged region probabilities"
    argmax = np.asarray(REGIONS_CLASS_ORDER)[average.argmax(0)] * (average.max(0) > 0.5)
    if np.array_equal(got, argmax):
        return "the regions are resolved by argmax instead of a 0.5 threshold per region"
    return f"{int((got != _paint(average, REGIONS_CLASS_ORDER)).sum())} of {got.size} voxels differ (unknown cause)"


def check_region_ensembling(merge: Callable[..., Any] | None = None) -> list[str]:
    """Problems of the installed nnU-Net's region-based inference/ensembling path; an empty list when it is right.

    ``merge`` replaces ``nnunetv2.ensembling.ensemble.merge_files`` (same signature), to check another
    implementation.
    """
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    if merge is None:
        from nnunetv2.ensembling.ensemble import merge_files as merge
    problems = []
    lm = LabelManager(REGIONS, REGIONS_CLASS_ORDER)
    logits = torch.linspace(-4, 4, 3 * 8).reshape(3, 2, 2, 2)
    probs = lm.apply_inference_nonlin(logits)
    if not torch.allclose(probs, torch.sigmoid(logits), atol=1e-6):
        twice = torch.sigmoid(torch.sigmoid(logits))
        what = "the sigmoid twice" if torch.allclose(probs, twice, atol=1e-6) else "not the sigmoid"
        problems.append(f"LabelManager.apply_inference_nonlin on region logits computes {what}")
    a, b = _case()
    average = (a + b) / 2
    expected = _paint(average, REGIONS_CLASS_ORDER)
    with tempfile.TemporaryDirectory(prefix="nnunet_transfer_doctor_") as tmp:
        import SimpleITK as sitk

        root = Path(tmp)
        ref = root / "ref.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros(a.shape[1:], dtype=np.uint8)), str(ref))
        _, properties = SimpleITKIO().read_seg(str(ref))
        files = []
        for i, member in enumerate((a, b)):
            np.savez_compressed(root / f"m{i}.npz", probabilities=member)
            with open(root / f"m{i}.pkl", "wb") as f:
                pickle.dump(properties, f)
            files.append(str(root / f"m{i}.npz"))
        merge(files, str(root / "ensembled"), ".nii.gz", SimpleITKIO(), lm, False)
        got = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "ensembled.nii.gz")))
    if not np.array_equal(got, expected):
        problems.append(f"nnUNetv2_ensemble (merge_files) on region probabilities: {_name_failure(got, average)}")
    return problems
