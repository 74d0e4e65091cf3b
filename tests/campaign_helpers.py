"""Shared pieces of the campaign tests: nnU-Net roots with tiny raw datasets, campaign files, finished folds."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import yaml

ALPHA, BETA = "Dataset911_Alpha", "Dataset912_Beta"


def make_roots(root: Path, monkeypatch=None, num_cases: int = 2) -> dict[str, str]:
    """nnUNet_raw/preprocessed/results under ``root`` with two tiny raw datasets (911 Alpha, 912 Beta) and a
    pretrained checkpoint file ``root/pretrained.pth`` (its contents are not read when a campaign is loaded).
    With ``monkeypatch``, the three variables are set in this process too."""
    from nnunet_transfer.demo.synthetic import make_dataset

    for i, name in ((911, "Alpha"), (912, "Beta")):
        make_dataset(root / "raw", i, name, num_cases=num_cases, shape=(8, 8, 8), seed=i)
    (root / "preprocessed").mkdir(exist_ok=True)
    (root / "results").mkdir(exist_ok=True)
    (root / "pretrained.pth").write_bytes(b"not read when loading a campaign")
    env = {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
           "nnUNet_results": str(root / "results")}
    if monkeypatch is not None:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
    return env


def campaign_dict(**changes) -> dict:
    """A valid campaign (2 targets, 2 folds, a baseline) for :func:`make_roots`; keyword arguments replace keys."""
    data = {
        "name": "unit",
        "pretrained": "pretrained.pth",
        "configurations": ["3d_fullres"],
        "folds": [0, 1],
        "targets": [{"dataset": 911}, {"dataset": BETA, "folds": [0]}],
        "baseline": {"trainer": "nnUNetTrainer"},
        "executor": {"kind": "local"},
        "device": "cpu",
    }
    data.update(changes)
    return data


def write_campaign(path: Path, data: dict | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def finish_fold(fold_dir: Path, dice: float = 0.5) -> None:
    """Make ``fold_dir`` look finished the way nnU-Net leaves it: a readable checkpoint_final.pth and a summary."""
    import torch

    fold_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"network_weights": {}}, fold_dir / "checkpoint_final.pth")
    (fold_dir / "validation").mkdir(exist_ok=True)
    (fold_dir / "validation" / "summary.json").write_text(json.dumps({
        "foreground_mean": {"Dice": dice}, "mean": {"1": {"Dice": dice}}, "metric_per_case": []}))


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` with its size and mtime (to show that nothing changed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a true value (returned); AssertionError after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
