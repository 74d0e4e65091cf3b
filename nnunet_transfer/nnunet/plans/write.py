"""Step 4 of a plans transfer: write the new plans and preprocess the target with them (nnU-Net's preprocessing,
pointed at explicit folders)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from nnunet_transfer.core.io import write_json_atomic
from nnunet_transfer.errors import PlansError
from nnunet_transfer.nnunet.datasets import DatasetLocation, NnUNetRoots
from nnunet_transfer.nnunet.plans.paths import nnunet_paths
from nnunet_transfer.nnunet.plans.transfer import PlansTransfer

__all__ = ["preprocess_transfer", "write_plans"]


def _target_location(
    transfer: PlansTransfer, raw: str | os.PathLike | None, preprocessed: str | os.PathLike | None
) -> DatasetLocation:
    """The target under the given roots; by default those the transfer was computed with."""
    if raw is None and transfer.raw_folder is not None:
        raw = transfer.raw_folder.parent
    if preprocessed is None:
        preprocessed = transfer.target_folder.parent
    return DatasetLocation(transfer.target_name, NnUNetRoots.resolve(raw, preprocessed))


def write_plans(
    transfer: PlansTransfer, overwrite: bool = False, *, preprocessed: str | os.PathLike | None = None
) -> Path:
    """Write the new plans file (and the target's dataset.json beside it, as nnU-Net does) into
    ``<preprocessed>/<target>/`` (default: the preprocessed root the transfer was computed for). Never overwrites
    existing plans unless ``overwrite``; then the old preprocessed data of those configurations is removed."""
    folder = _target_location(transfer, None, preprocessed).preprocessed
    path = folder / f"{transfer.identifier}.json"
    if path.exists() and not overwrite:
        raise PlansError(f"{path}: exists already; pass --overwrite to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for c in transfer.configurations:
            stale = folder / transfer.plans["configurations"][c]["data_identifier"]
            if stale.is_dir():
                shutil.rmtree(stale)
    write_json_atomic(path, transfer.plans, indent=4)
    dj = folder / "dataset.json"
    if not dj.exists():
        write_json_atomic(dj, transfer.target_dataset_json, indent=4)
    return path


def preprocess_transfer(
    transfer: PlansTransfer,
    num_processes: int = 2,
    *,
    raw: str | os.PathLike | None = None,
    preprocessed: str | os.PathLike | None = None,
) -> None:
    """Preprocess the target with the new plans through nnU-Net's own preprocessing (from ``<raw>/<target>`` into
    ``<preprocessed>/<target>``, by default the roots the transfer was computed for), then check the result trains:
    one dataset format per folder and every training case present."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    location = _target_location(transfer, raw, preprocessed)
    plans_file = location.preprocessed / f"{transfer.identifier}.json"
    if not plans_file.is_file():
        raise PlansError(f"{plans_file}: plans not written yet; call write_plans first (with the same preprocessed "
                         "root)")
    try:
        with nnunet_paths(raw=location.raw.parent, preprocessed=location.preprocessed.parent):
            preprocess_dataset(location.id, transfer.identifier, transfer.configurations, [num_processes],
                               verbose=False, show_progress_bar=False)
    except (AssertionError, RuntimeError) as e:
        raise PlansError(f"{location.preprocessed}: nnU-Net's preprocessing with plans {transfer.identifier!r} "
                         f"failed: {e}") from None
    n_cases = int(transfer.target_dataset_json.get("numTraining", 0))
    for c in transfer.configurations:
        folder = location.preprocessed / transfer.plans["configurations"][c]["data_identifier"]
        try:
            cls = infer_dataset_class(str(folder))
            ids = cls.get_identifiers(str(folder))
        except Exception as e:
            raise PlansError(f"{folder}: preprocessing left a folder nnU-Net cannot read ({e})") from None
        if n_cases and len(ids) != n_cases:
            raise PlansError(f"{folder}: {len(ids)} preprocessed cases, expected {n_cases}")
