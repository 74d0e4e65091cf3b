"""What is done is read from nnU-Net's files: fold states, the commands they lead to, prepared data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from campaign_helpers import ALPHA, campaign_dict, finish_fold, make_roots, write_campaign

from nnunet_transfer.campaigns.spec import load_campaign
from nnunet_transfer.campaigns.state import (
    checkpoint_readable,
    configuration_data_identifier,
    move_aside,
    prepare_state,
    train_state,
)


@pytest.fixture
def campaign(tmp_path, monkeypatch):
    make_roots(tmp_path, monkeypatch, num_cases=3)
    return load_campaign(write_campaign(tmp_path / "c.yaml", campaign_dict()))


def ft(campaign, fold=0):
    return campaign.task(f"{ALPHA}/3d_fullres/finetune/fold_{fold}")


def save(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"current_epoch": 3, "network_weights": {"w": torch.zeros(64)}}, path)
    return path


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # torch.save killed mid-write
    return path


def test_fold_states_and_their_commands(campaign):
    task = ft(campaign)
    d = task.fold_dir
    pretrained = str(campaign.pretrained)

    s = train_state(task)
    assert (s.kind, s.flag, s.detail) == ("new", None, "not started")
    cmd = task.command(s, "cpu")
    assert cmd[1:] == ["911", "3d_fullres", "0", "-tr", "nnUNetTrainerAdaptiveFT", "-p", "nnUNetPlans",
                       "-pretrained_weights", pretrained, "-device", "cpu"]
    assert Path(cmd[0]).name == "nnUNetv2_train"

    d.mkdir(parents=True)
    (d / "pretrained_load_report.json").write_text("{}")  # the AdaptiveFT run began, no checkpoint yet
    s = train_state(task)
    assert s.kind == "continue" and "no checkpoint yet" in s.detail
    cmd = task.command(s, "cpu")
    assert "--c" in cmd and "-pretrained_weights" not in cmd  # nnU-Net refuses both at once

    save(d / "checkpoint_best.pth")
    save(d / "checkpoint_latest.pth")
    s = train_state(task)
    assert s.kind == "continue" and s.detail.startswith("continues from checkpoint_latest.pth")

    save(d / "checkpoint_final.pth")
    s = train_state(task)
    assert (s.kind, s.flag) == ("validate", "--val")
    cmd = task.command(s, "cuda")
    assert cmd[-3:] == ["--val", "-device", "cuda"] and "-pretrained_weights" not in cmd

    (d / "validation").mkdir()
    (d / "validation" / "summary.json").write_text("{}")
    assert train_state(task).kind == "done"


def test_baseline_never_gets_pretrained_weights(campaign):
    task = campaign.task(f"{ALPHA}/3d_fullres/baseline/fold_1")
    cmd = task.command(train_state(task), "cpu")
    assert cmd[1:] == ["911", "3d_fullres", "1", "-tr", "nnUNetTrainer", "-p", "nnUNetPlans", "-device", "cpu"]


def test_unreadable_checkpoints_do_not_count_and_are_moved_aside_not_deleted(campaign):
    task = ft(campaign)
    d = task.fold_dir
    best = save(d / "checkpoint_best.pth")
    latest = truncate(save(d / "checkpoint_latest.pth"))
    assert checkpoint_readable(best) and not checkpoint_readable(latest)
    s = train_state(task)
    assert s.kind == "continue" and s.detail.startswith("continues from checkpoint_best.pth")
    assert s.unreadable == (latest,) and "unreadable: checkpoint_latest.pth" in s.detail
    size = latest.stat().st_size
    moved = move_aside(s.unreadable)
    assert len(moved) == 1 and moved[0].name.startswith("checkpoint_latest.pth.unreadable-")
    assert moved[0].stat().st_size == size and not latest.exists()
    assert train_state(task).unreadable == ()

    # a final checkpoint cut short: the fold continues (nnU-Net's --c would otherwise take the broken final)
    truncate(save(d / "checkpoint_final.pth"))
    (d / "validation").mkdir()
    (d / "validation" / "summary.json").write_text("{}")
    s = train_state(task)
    assert s.kind == "continue" and s.unreadable == (d / "checkpoint_final.pth",)
    # a name taken already: a second suffix, still nothing deleted
    again = move_aside([d / "checkpoint_final.pth"])
    assert again[0].exists() and len(list(d.glob("*.unreadable-*"))) == 2


def test_finished_fold_is_done(campaign):
    finish_fold(ft(campaign).fold_dir)
    s = train_state(ft(campaign))
    assert s.kind == "done" and s.flag is None


def test_prepare_state_against_the_raw_cases(campaign, tmp_path):
    task = campaign.prepare_tasks[0]
    pre, raw = tmp_path / "preprocessed", tmp_path / "raw"
    s = prepare_state(task, pre, raw)
    assert s.plans_missing and not s.ready
    folder = pre / ALPHA
    folder.mkdir(parents=True)
    plans = {"configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres"},
                                "3d_cascade_fullres": {"inherits_from": "3d_fullres"}}}
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text("{}")
    data = folder / "nnUNetPlans_3d_fullres"
    data.mkdir()
    gt = folder / "gt_segmentations"
    gt.mkdir()
    cases = ["alpha_000", "alpha_001", "alpha_002"]
    for c in cases:
        (gt / f"{c}.nii.gz").write_bytes(b"")
    for c in cases[:2]:
        (data / f"{c}.b2nd").write_bytes(b"")
        (data / f"{c}.pkl").write_bytes(b"")
    (data / f"{cases[2]}.b2nd").write_bytes(b"")  # killed before its .pkl (written last)
    s = prepare_state(task, pre, raw)
    assert not s.plans_missing and s.incomplete == ("3d_fullres",) and "2 of 3 cases" in s.detail
    (data / f"{cases[2]}.pkl").write_bytes(b"")
    s = prepare_state(task, pre, raw)
    assert s.ready and "3d_fullres: 3 cases preprocessed" in s.detail
    (gt / f"{cases[0]}.nii.gz").unlink()
    assert prepare_state(task, pre, raw).incomplete == ("3d_fullres",)
    assert configuration_data_identifier(plans, "3d_cascade_fullres") == "nnUNetPlans_3d_fullres"
    assert configuration_data_identifier(plans, "2d") is None


def test_default_splits_are_nnunets_and_never_overwritten(tmp_path):
    from nnunet_transfer.nnunet.datasets import ensure_default_splits

    cases = [f"case_{i:03d}" for i in (4, 0, 3, 1, 2, 5)]
    assert ensure_default_splits(tmp_path, cases[:4]) is None  # fewer than 5 cases: nnU-Net decides
    path = ensure_default_splits(tmp_path, cases)
    splits = json.loads(path.read_text())
    assert len(splits) == 5
    assert sorted(c for s in splits for c in s["val"]) == sorted(cases)  # every case validated exactly once
    assert all(sorted(s["train"] + s["val"]) == sorted(cases) for s in splits)
    # nnU-Net's own split for these (sorted) cases: KFold(5, shuffle, seed 12345), as nnUNetTrainer.do_split writes it
    assert splits[0] == {"train": ["case_000", "case_001", "case_002", "case_004"], "val": ["case_003", "case_005"]}
    path.write_text("[]")
    assert ensure_default_splits(tmp_path, cases) is None and path.read_text() == "[]"
