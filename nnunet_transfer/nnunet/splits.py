"""Label-fraction folds: nested subsets of a fold's training cases, appended to nnU-Net's ``splits_final.json``.

A subset is "base fold ``b``, ``n`` of its training cases, seed ``s``": the first ``n`` cases of one seeded
permutation of the base fold's (sorted) training cases, so each smaller subset of a base fold lies inside every
larger one. Its validation cases are the base fold's, unchanged, so every point of a learning curve is measured on the
same cases. Each subset is one more fold of ``splits_final.json`` (a fold index past the existing ones: stock
``nnUNetv2_train D C 5`` trains it); the sidecar ``splits_final_subsets.json`` beside it says which base fold,
fraction, seed and cases each appended fold is.

Writing (:func:`ensure_subsets`) holds an ``fcntl`` lock on ``splits_final.json.lock`` (two studies appending at once
take turns), appends text after the existing folds (their bytes stay identical), reuses the folds already recorded
(running again appends nothing) and replaces each file atomically: the sidecar first, so that a crash between the two
leaves a recorded fold that the next call appends, never an appended fold nobody knows.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnunet_transfer.core.io import read_text, write_text_atomic
from nnunet_transfer.errors import SplitsError

__all__ = [
    "SIDECAR",
    "SPLITS",
    "Subset",
    "SubsetRequest",
    "base_splits",
    "draw_subset",
    "ensure_subsets",
    "labels_dropped",
    "plan_subsets",
    "subset_size",
]

SPLITS = "splits_final.json"
SIDECAR = "splits_final_subsets.json"
_INDENT = " " * 4


@dataclass(frozen=True)
class SubsetRequest:
    """A subset wanted: ``n_train`` of ``base_fold``'s training cases drawn with ``seed`` (``fraction``: what the
    campaign asked for, recorded)."""

    base_fold: int
    n_train: int
    fraction: float
    seed: int

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.base_fold, self.n_train, self.seed)


@dataclass(frozen=True)
class Subset:
    """An appended fold: its index in ``splits_final.json`` and what it is."""

    fold: int
    base_fold: int
    fraction: float
    n_train: int
    seed: int
    train: tuple[str, ...]


def subset_size(n_base: int, fraction: float | None = None, cases: int | None = None) -> int:
    """How many training cases a fraction (rounded half up) or an absolute count takes of a fold with ``n_base``."""
    if cases is not None:
        return cases
    assert fraction is not None
    return math.floor(fraction * n_base + 0.5)


def draw_subset(train: Sequence[str], n: int, seed: int, base_fold: int) -> list[str]:
    """The first ``n`` of one permutation of the sorted ``train`` cases (numpy generator seeded with ``[seed,
    base_fold]``), sorted: nested in ``n`` for a given seed and base fold."""
    import numpy as np

    order = np.random.default_rng([seed, base_fold]).permutation(len(train))
    cases = sorted(train)
    return sorted(cases[i] for i in order[:n])


def _read_list(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(read_text(path, "splits", SplitsError))
    except ValueError as e:
        raise SplitsError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, list) or not all(isinstance(s, dict) and isinstance(s.get("train"), list)
                                             and isinstance(s.get("val"), list) for s in data):
        raise SplitsError(f"{path}: expected a list of {{'train': [...], 'val': [...]}} folds")
    return data


def base_splits(folder: str | os.PathLike, identifiers: Sequence[str]) -> list[dict[str, Any]]:
    """The folds of ``folder/splits_final.json``, or nnU-Net's default 5 folds of ``identifiers`` when the file is
    not there yet (what the prepare step writes: ``datasets.ensure_default_splits``). Reads only."""
    path = Path(folder) / SPLITS
    if path.is_file():
        return _read_list(path)
    if len(identifiers) < 5:
        raise SplitsError(f"{path}: not there, and {len(identifiers)} cases are too few for nnU-Net's default 5 "
                          "folds: write splits_final.json yourself")
    from nnunet_transfer.nnunet.datasets import default_splits

    return default_splits(identifiers)


def _read_sidecar(folder: Path) -> list[dict[str, Any]]:
    path = folder / SIDECAR
    if not path.is_file():
        return []
    try:
        data = json.loads(read_text(path, "splits sidecar", SplitsError))
        subsets = data["subsets"]
        if not isinstance(subsets, list):
            raise TypeError("'subsets' is not a list")
        for s in subsets:
            for k in ("fold", "base_fold", "train_cases", "seed", "train"):
                if k not in s:
                    raise KeyError(k)
    except (ValueError, TypeError, KeyError) as e:
        raise SplitsError(f"{path}: unreadable ({type(e).__name__}: {e}); move it aside only together with the "
                          f"folds it describes in {SPLITS}") from None
    return subsets


def _recorded(subsets: Iterable[dict[str, Any]]) -> dict[tuple[int, int, int], dict[str, Any]]:
    return {(int(s["base_fold"]), int(s["train_cases"]), int(s["seed"])): s for s in subsets}


def plan_subsets(folder: str | os.PathLike, requests: Sequence[SubsetRequest],
                 identifiers: Sequence[str]) -> dict[tuple[int, int, int], int]:
    """The fold index each request has or will get (reads only): recorded ones keep theirs, new ones follow the
    existing folds in request order."""
    folder = Path(folder)
    n = len(base_splits(folder, identifiers))
    recorded = _recorded(_read_sidecar(folder))
    n = max([n, *(int(s["fold"]) + 1 for s in recorded.values())])
    out: dict[tuple[int, int, int], int] = {}
    for r in requests:
        if r.key in out:
            continue
        if r.key in recorded:
            out[r.key] = int(recorded[r.key]["fold"])
        else:
            out[r.key] = n
            n += 1
    return out


def _fold_text(fold: dict[str, Any]) -> str:
    text = json.dumps({"train": fold["train"], "val": fold["val"]}, indent=4)
    return "\n".join(_INDENT + line for line in text.splitlines())


def _append(text: str, folds: Sequence[dict[str, Any]]) -> str:
    """``text`` (a JSON list) with ``folds`` appended after its last item; the bytes before stay as they are."""
    body = text.rstrip()
    if not body.endswith("]"):
        raise SplitsError(f"{SPLITS}: does not end with ']'")
    body = body[:-1].rstrip()
    sep = "\n" if body.endswith("[") else ",\n"
    return body + sep + ",\n".join(_fold_text(f) for f in folds) + "\n]\n"


def ensure_subsets(folder: str | os.PathLike, requests: Sequence[SubsetRequest],
                   identifiers: Sequence[str]) -> dict[tuple[int, int, int], Subset]:
    """Append the folds of ``requests`` not recorded yet to ``folder/splits_final.json`` (written with nnU-Net's
    default folds first when missing) and record them in the sidecar; returns every request's subset. Under an
    exclusive lock of ``splits_final.json.lock``; the existing folds stay byte-identical."""
    folder = Path(folder)
    path = folder / SPLITS
    with open(folder / f"{SPLITS}.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if not path.is_file():
            write_text_atomic(path, json.dumps(base_splits(folder, identifiers), indent=4) + "\n")
        text = read_text(path, "splits", SplitsError)
        splits = _read_list(path)
        sidecar = _read_sidecar(folder)
        recorded = _recorded(sidecar)
        added = []
        for r in requests:
            if r.key in recorded:
                continue
            if not 0 <= r.base_fold < len(splits):
                raise SplitsError(f"{path}: no fold {r.base_fold} (it has {len(splits)})")
            base = splits[r.base_fold]
            n_folds = max([len(splits), *(int(s["fold"]) + 1 for s in sidecar)])
            entry = {"fold": n_folds, "base_fold": r.base_fold, "fraction": r.fraction, "train_cases": r.n_train,
                     "seed": r.seed, "train": draw_subset(base["train"], r.n_train, r.seed, r.base_fold)}
            sidecar.append(entry)
            recorded[r.key] = entry
            added.append(entry)
        if added:
            write_text_atomic(folder / SIDECAR, json.dumps(
                {"about": f"folds appended to {SPLITS} by nnunet-transfer: nested subsets of a base fold's training "
                          "cases (the first train_cases of a permutation seeded with [seed, base_fold]); the "
                          "validation cases are the base fold's",
                 "subsets": sidecar}, indent=2) + "\n")
        pending = sorted((s for s in sidecar if int(s["fold"]) >= len(splits)), key=lambda s: int(s["fold"]))
        if pending:
            if [int(s["fold"]) for s in pending] != list(range(len(splits), len(splits) + len(pending))):
                raise SplitsError(f"{folder / SIDECAR}: records folds {[s['fold'] for s in pending]} but {path} has "
                                  f"{len(splits)}: the two files do not belong together")
            text = _append(text, [{"train": s["train"], "val": splits[int(s["base_fold"])]["val"]} for s in pending])
            write_text_atomic(path, text)
            splits = _read_list(path)
        out: dict[tuple[int, int, int], Subset] = {}
        for r in requests:
            s = recorded[r.key]
            fold = int(s["fold"])
            if sorted(splits[fold]["train"]) != sorted(s["train"]) or \
                    sorted(splits[fold]["val"]) != sorted(splits[r.base_fold]["val"]):
                raise SplitsError(f"{path}: fold {fold} is not the subset {folder / SIDECAR} records (base fold "
                                  f"{r.base_fold}, {r.n_train} cases, seed {r.seed}): the files were edited")
            out[r.key] = Subset(fold, r.base_fold, float(s.get("fraction", r.fraction)), r.n_train, r.seed,
                                tuple(s["train"]))
        return out


def labels_dropped(folder: str | os.PathLike, data_identifier: str, base_train: Sequence[str],
                   subset: Sequence[str]) -> list[str] | None:
    """The labels (or regions) present in some training case of the base fold but in no case of ``subset``, from the
    ``class_locations`` nnU-Net's preprocessing stores in each case's ``.pkl`` (exact: every voxel was looked at);
    None when the preprocessed cases are not there yet."""
    data = Path(folder) / data_identifier
    present: dict[str, set[str]] = {}
    for case in base_train:
        pkl = data / f"{case}.pkl"
        if not pkl.is_file():
            return None
        with open(pkl, "rb") as f:
            props = pickle.load(f)  # nnU-Net's own file (its load_pickle does the same)
        locations = props.get("class_locations") or {}
        present[case] = {str(k) for k, v in locations.items() if v is not None and len(v) > 0}
    everywhere = set().union(*present.values()) if present else set()
    kept = set().union(*(present[c] for c in subset)) if subset else set()
    return sorted(everywhere - kept)
