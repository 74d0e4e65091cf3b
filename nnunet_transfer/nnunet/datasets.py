"""Where nnU-Net keeps a dataset: its full name and its raw, preprocessed and results folders (the one locator).

Every function takes the three nnU-Net roots as explicit parameters; a root left out is read from its environment
variable (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``) when the function is called, never at
import. Nothing here changes the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nnunet_transfer.core.io import read_json_object
from nnunet_transfer.errors import PlansError

__all__ = [
    "DatasetLocation",
    "NnUNetRoots",
    "TargetDataset",
    "dataset_name",
    "default_splits",
    "ensure_default_splits",
    "find_target_dataset",
    "locate_dataset",
    "raw_case_identifiers",
    "read_json",
]

Root = Literal["raw", "preprocessed", "results"]
PathArg = str | os.PathLike | None

ENV_VARS: dict[str, str] = {"raw": "nnUNet_raw", "preprocessed": "nnUNet_preprocessed", "results": "nnUNet_results"}
_NAME = re.compile(r"Dataset\d{3,}_.+")


@dataclass(frozen=True)
class NnUNetRoots:
    """nnU-Net's three data roots; ``None`` when neither given nor set in the environment."""

    raw: Path | None = None
    preprocessed: Path | None = None
    results: Path | None = None

    @classmethod
    def resolve(cls, raw: PathArg = None, preprocessed: PathArg = None, results: PathArg = None) -> NnUNetRoots:
        """The given roots; each one left out is read from its nnUNet_* environment variable now."""
        given = {"raw": raw, "preprocessed": preprocessed, "results": results}
        out = {}
        for kind, value in given.items():
            if value is None:
                value = os.environ.get(ENV_VARS[kind]) or None
            out[kind] = Path(value) if value is not None else None
        return cls(**out)

    def require(self, kind: Root) -> Path:
        """The root of that kind, or a PlansError naming its variable."""
        value = getattr(self, kind)
        if value is None:
            raise PlansError(f"{ENV_VARS[kind]} is not set: it must point to nnU-Net's {kind} data folder "
                             f"(or pass {kind}= explicitly)")
        return value

    def describe(self) -> str:
        return ", ".join(f"{ENV_VARS[k]}={getattr(self, k) or '<unset>'}" for k in ENV_VARS)


@dataclass(frozen=True)
class DatasetLocation:
    """A dataset's full nnU-Net name and its folders under the given roots (which need not exist)."""

    name: str
    roots: NnUNetRoots

    @property
    def id(self) -> int:
        return int(self.name[len("Dataset"):].split("_", 1)[0])

    @property
    def raw(self) -> Path:
        return self.roots.require("raw") / self.name

    @property
    def preprocessed(self) -> Path:
        return self.roots.require("preprocessed") / self.name

    @property
    def results(self) -> Path:
        return self.roots.require("results") / self.name


@dataclass
class TargetDataset:
    """A preprocessed nnU-Net dataset: its folder, plans and dataset.json."""

    name: str
    folder: Path
    plans_file: Path
    plans: dict[str, Any]
    dataset_json: dict[str, Any]


def read_json(source: Mapping[str, Any] | str | os.PathLike, what: str = "") -> dict[str, Any]:
    """A JSON object from the file ``source`` (a mapping is taken as already read); PlansError naming the file (and
    ``what`` it should be: "plans", "dataset.json") when it is missing, invalid or not an object."""
    if isinstance(source, Mapping):
        return dict(source)
    return read_json_object(source, what, PlansError)


def _candidates(dataset_id: int, roots: NnUNetRoots) -> list[str]:
    prefix = f"Dataset{dataset_id:03d}_"
    found = set()
    for root in (roots.raw, roots.preprocessed, roots.results):
        if root is not None and root.is_dir():
            found.update(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix))
    return sorted(found)


def dataset_name(
    dataset: str | int, *, raw: PathArg = None, preprocessed: PathArg = None, results: PathArg = None
) -> str | None:
    """nnU-Net's full dataset name (``Dataset123_Name``) for a name or ID, or None if no folder of the roots has it.

    A full name is returned as it is (as nnU-Net does); an ID is looked up as a ``DatasetXXX_*`` folder in the raw,
    preprocessed and results roots. An ID that names two different datasets is a PlansError.
    """
    text = str(dataset)
    if _NAME.fullmatch(text):
        return text
    if not text.isdigit():
        return None
    roots = NnUNetRoots.resolve(raw, preprocessed, results)
    names = _candidates(int(text), roots)
    if len(names) > 1:
        raise PlansError(f"dataset ID {text} is ambiguous: {names} ({roots.describe()}); rename or remove one")
    return names[0] if names else None


def locate_dataset(
    dataset: str | int, *, raw: PathArg = None, preprocessed: PathArg = None, results: PathArg = None
) -> DatasetLocation:
    """The dataset's name and folders under the given roots (each defaulting to its nnUNet_* variable now)."""
    roots = NnUNetRoots.resolve(raw, preprocessed, results)
    name = dataset_name(dataset, raw=roots.raw, preprocessed=roots.preprocessed, results=roots.results)
    if name is None:
        raise PlansError(f"dataset {str(dataset)!r} not found: give a DatasetXXX_Name or the ID of a DatasetXXX_* "
                         f"folder in one of {roots.describe()}")
    return DatasetLocation(name, roots)


def find_target_dataset(
    dataset: str | int,
    plans_identifier: str = "nnUNetPlans",
    *,
    raw: PathArg = None,
    preprocessed: PathArg = None,
    results: PathArg = None,
) -> TargetDataset:
    """Locate ``<preprocessed>/DatasetXXX_Name/{plans_identifier}.json`` and its dataset.json."""
    roots = NnUNetRoots.resolve(raw, preprocessed, results)
    roots.require("preprocessed")
    location = locate_dataset(dataset, raw=roots.raw, preprocessed=roots.preprocessed, results=roots.results)
    folder = location.preprocessed
    plans_file = folder / f"{plans_identifier}.json"
    if not plans_file.is_file():
        have = sorted(p.stem for p in folder.glob("*.json") if p.stem not in ("dataset", "dataset_fingerprint"))
        raise PlansError(
            f"{plans_file}: plans not found (plans in {folder}: {have or 'none'}); run nnUNetv2_plan_and_preprocess"
        )
    return TargetDataset(location.name, folder, plans_file, read_json(plans_file), read_json(folder / "dataset.json"))


def raw_case_identifiers(raw_folder: str | os.PathLike) -> list[str]:
    """The training cases of a raw dataset folder, as nnU-Net's preprocessing finds them: the keys of
    ``dataset.json``'s ``dataset`` section, else the case names of ``imagesTr`` (``CASE_XXXX<file_ending>``).

    PlansError naming the file when ``dataset.json`` is missing or invalid.
    """
    folder = Path(raw_folder)
    dataset_json = read_json(folder / "dataset.json")
    if isinstance(dataset_json.get("dataset"), dict):
        return sorted(dataset_json["dataset"])
    if "file_ending" not in dataset_json:
        raise PlansError(f"{folder / 'dataset.json'}: no file_ending")
    from nnunetv2.utilities.utils import get_identifiers_from_splitted_dataset_folder

    images = folder / "imagesTr"
    if not images.is_dir():
        return []
    return [str(i) for i in get_identifiers_from_splitted_dataset_folder(str(images), dataset_json["file_ending"])]


def ensure_default_splits(preprocessed_dataset_folder: str | os.PathLike, identifiers: list[str]) -> Path | None:
    """Write nnU-Net's default ``splits_final.json`` (5 folds, seed 12345, over the sorted case identifiers: what
    ``nnUNetTrainer.do_split`` writes on its first run) when the folder has none; returns the path written, or None.

    Folds trained at the same time (one per GPU, two campaign runs) would otherwise each write the file while another
    reads it. Written atomically; with fewer than 5 cases nothing is written (nnU-Net decides).
    """
    from nnunet_transfer.core.io import write_json_atomic

    path = Path(preprocessed_dataset_folder) / "splits_final.json"
    if path.exists() or len(identifiers) < 5:
        return None
    return write_json_atomic(path, default_splits(identifiers), indent=4)


def default_splits(identifiers: list[str] | tuple[str, ...]) -> list[dict[str, list[str]]]:
    """nnU-Net's default 5 folds (seed 12345) over the sorted case identifiers, as ``splits_final.json`` holds them."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    splits = generate_crossval_split(sorted(identifiers), seed=12345, n_splits=5)
    return [{k: [str(i) for i in v] for k, v in split.items()} for split in splits]
