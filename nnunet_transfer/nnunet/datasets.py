"""Where nnU-Net keeps a dataset: its full name, its preprocessed plans and dataset.json (one locator)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnunet_transfer.errors import PlansError

__all__ = ["TargetDataset", "dataset_name", "find_target_dataset", "read_json"]


@dataclass
class TargetDataset:
    """A preprocessed nnU-Net dataset: its folder, plans and dataset.json."""

    name: str
    folder: Path
    plans_file: Path
    plans: dict[str, Any]
    dataset_json: dict[str, Any]


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise PlansError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise PlansError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise PlansError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def dataset_name(dataset: str | int) -> str | None:
    """nnU-Net's full dataset name (``Dataset123_Name``) for a name or ID, or None if no nnU-Net folder has it."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(int(dataset) if str(dataset).isdigit() else str(dataset))
    except (RuntimeError, ValueError):
        return None


def find_target_dataset(dataset: str, plans_identifier: str = "nnUNetPlans") -> TargetDataset:
    """Locate ``$nnUNet_preprocessed/DatasetXXX_Name/{plans_identifier}.json`` and its dataset.json."""
    root = os.environ.get("nnUNet_preprocessed")
    if not root:
        raise PlansError("nnUNet_preprocessed is not set: it must point to nnU-Net's preprocessed data folder")
    name = dataset_name(dataset)
    if name is None:
        raise PlansError(f"dataset {dataset!r} not found in nnUNet_raw, nnUNet_preprocessed or nnUNet_results")
    folder = Path(root) / name
    plans_file = folder / f"{plans_identifier}.json"
    if not plans_file.is_file():
        have = sorted(p.stem for p in folder.glob("*.json") if p.stem not in ("dataset", "dataset_fingerprint"))
        raise PlansError(
            f"{plans_file}: plans not found (plans in {folder}: {have or 'none'}); run nnUNetv2_plan_and_preprocess"
        )
    return TargetDataset(name, folder, plans_file, read_json(plans_file), read_json(folder / "dataset.json"))
