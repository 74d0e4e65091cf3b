"""Step 2 of a plans transfer: what the target's own raw data decides (through nnU-Net's fingerprint extractor and
experiment planner, with the folders given explicitly).

The fingerprint (``dataset_fingerprint.json``) is nnU-Net's: computed by its ``DatasetFingerprintExtractor`` into
``<preprocessed>/<dataset>/`` when missing, exactly where ``nnUNetv2_plan_and_preprocess`` puts it. A dry run
computes it (or copies the existing one) into a temporary preprocessed root instead, so that nothing is written.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_transfer.errors import PlansError
from nnunet_transfer.nnunet.datasets import DatasetLocation, NnUNetRoots as Roots, PathArg, dataset_name, read_json
from nnunet_transfer.nnunet.plans.paths import nnunet_paths

__all__ = ["TargetFacts", "analyse_target", "locate_raw_target"]

FINGERPRINT = "dataset_fingerprint.json"


@dataclass
class TargetFacts:
    """The target's fingerprint and what nnU-Net's planner derives from it for the target itself."""

    fingerprint: dict[str, Any]
    normalization_schemes: list[str]
    use_mask_for_norm: list[bool]
    own_spacing: np.ndarray  # nnU-Net's own 3d_fullres spacing for the target, in the images' axis order
    reader_writer: str


def locate_raw_target(
    target: str | int, *, raw: PathArg = None, preprocessed: PathArg = None, results: PathArg = None
) -> tuple[DatasetLocation, dict[str, Any]]:
    """The target's location (raw and preprocessed roots required) and its raw dataset.json."""
    roots = Roots.resolve(raw, preprocessed, results)
    raw_root, _ = roots.require("raw"), roots.require("preprocessed")
    name = dataset_name(target, raw=roots.raw, preprocessed=roots.preprocessed, results=roots.results)
    if name is None:
        raise PlansError(f"target dataset {str(target)!r}: no raw data in nnUNet_raw ({raw_root}): no "
                         f"DatasetXXX_* folder of that ID in {roots.describe()}")
    location = DatasetLocation(name, roots)
    dj = location.raw / "dataset.json"
    if not dj.is_file():
        raise PlansError(f"target dataset {name}: no raw data ({dj} missing); the target's own images are needed "
                         "for its fingerprint and preprocessing")
    return location, read_json(dj)


def analyse_target(location: DatasetLocation, *, dry_run: bool = False, num_processes: int = 2) -> TargetFacts:
    """Fingerprint, normalisation schemes, nnU-Net's own spacing and reader/writer of the target.

    Writes nothing but, when it is missing and ``dry_run`` is False, the fingerprint into the target's preprocessed
    folder (and, as nnU-Net's planner does, a ``splits_final.json`` found beside the raw data).
    """
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    name = location.name
    existing = location.preprocessed / FINGERPRINT
    with ExitStack() as stack:
        root = location.roots.require("preprocessed")
        if dry_run:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nnunet_transfer_dry_")))
            if existing.is_file():
                (root / name).mkdir()
                shutil.copy(existing, root / name / FINGERPRINT)
        stack.enter_context(nnunet_paths(raw=location.roots.require("raw"), preprocessed=root))
        if not (root / name / FINGERPRINT).is_file():
            extractor = DatasetFingerprintExtractor(name, num_processes, verbose=False)
            extractor.show_progress_bar = False
            extractor.run(overwrite_existing=False)
        planner = ExperimentPlanner(name, suppress_transpose=False)
        norm, mask = planner.determine_normalization_scheme_and_whether_mask_is_used_for_norm()
        own_spacing = planner.determine_fullres_target_spacing()
        example = next(iter(planner.dataset.values()))["images"][0]
        rw = determine_reader_writer_from_dataset_json(planner.dataset_json, example, allow_nonmatching_filename=True,
                                                       verbose=False)
        return TargetFacts(planner.dataset_fingerprint, list(norm), [bool(m) for m in mask], np.asarray(own_spacing),
                           rw.__name__)
