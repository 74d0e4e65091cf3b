"""Preemption through the stock CLI (issue 10): a stop signal to a running ``nnUNetv2_train -tr
nnUNetTrainerAdaptiveFT`` ends it after the epoch under way with ``checkpoint_latest.pth`` and exit status 75;
``--c`` continues from the next epoch with the per-epoch rates of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from helpers import RECIPES, bin_path, epochs_in_log, run, signal_in_epoch

from nnunet_transfer.core.preemption import PREEMPTED_EXIT_CODE

TRAINER = "nnUNetTrainerAdaptiveFT"
DATASET = "Dataset901_Aniso"
FOLDER = f"{TRAINER}__nnUNetPlans__3d_fullres"


def _env(workspace, results: Path) -> dict[str, str]:
    return {**workspace.env, "nnUNet_results": str(results), "NNUNET_TRANSFER_RECIPE": str(RECIPES / "preempt.yaml")}


def _train(workspace, *flags: str) -> list[str]:
    return [bin_path("nnUNetv2_train"), str(workspace.ANISO), "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu",
            *flags]


def _fold(results: Path) -> Path:
    return results / DATASET / FOLDER / "fold_0"


def _table(fold: Path) -> list[dict]:
    return [{k: r[k] for k in ("epoch", "lr", "trainable")} for r in json.loads((fold / "lr_table.json").read_text())]


@pytest.fixture(scope="module")
def uninterrupted(workspace, tmp_path_factory) -> list[dict]:
    """lr_table.json of the recipe trained without interruption."""
    results = tmp_path_factory.mktemp("uninterrupted")
    run(_train(workspace, "-pretrained_weights", str(workspace.checkpoint)), _env(workspace, results))
    table = _table(_fold(results))
    assert [r["epoch"] for r in table] == [0, 1, 2, 3]
    return table


def _interrupt_in_epoch_1(workspace, results: Path, out: Path, send) -> tuple[int, Path]:
    """Start a fine-tuning, call ``send(proc)`` once epoch 1 has started, wait for the end; (status, training log)."""
    return signal_in_epoch(_train(workspace, "-pretrained_weights", str(workspace.checkpoint)),
                           _env(workspace, results), _fold(results), 1, send, out)


def _assert_stopped_after_epoch_1(stop: str, status: int, output: str, log: Path, fold: Path) -> None:
    assert status == PREEMPTED_EXIT_CODE, output[-3000:]
    assert "Traceback" not in output
    assert (f"Training stopped on {stop} (received " in output and "at the end of epoch 1" in output
            and f"Continue with: nnUNetv2_train {DATASET} 3d_fullres 0 -tr {TRAINER} -p nnUNetPlans -device cpu --c"
            in output), output[-3000:]
    assert epochs_in_log(log) == [0, 1]  # epoch 2 never started
    assert torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)["current_epoch"] == 2
    assert not (fold / "checkpoint_final.pth").exists()
    assert not list(fold.glob(".checkpoint_*"))
    assert [r["epoch"] for r in _table(fold)] == [0, 1]


def test_sigusr1_ends_the_epoch_and_continue_resumes_at_the_next(workspace, tmp_path, uninterrupted):
    """SIGUSR1 to the training process, as the campaign executor sends it."""
    results = tmp_path / "results"
    fold = _fold(results)
    out = tmp_path / "stopped.out"
    status, log = _interrupt_in_epoch_1(workspace, results, out, lambda proc: os.kill(proc.pid, signal.SIGUSR1))
    _assert_stopped_after_epoch_1("SIGUSR1", status, out.read_text(), log, fold)

    logs_before = set(fold.glob("training_log_*.txt"))
    run(_train(workspace, "--c"), _env(workspace, results))
    (resumed_log,) = set(fold.glob("training_log_*.txt")) - logs_before
    assert epochs_in_log(resumed_log) == [2, 3]  # from the next epoch: none skipped, none repeated
    assert (fold / "checkpoint_final.pth").is_file() and not (fold / "checkpoint_latest.pth").exists()
    assert _table(fold) == uninterrupted


def test_sigterm_to_the_process_group_ends_the_epoch(workspace, tmp_path):
    """SIGTERM to every process of the training, data-augmentation workers included, as a scheduler sends it: the
    workers stay up, the epoch finishes, the checkpoint is written (resuming it is the SIGUSR1 test's)."""
    results = tmp_path / "results"
    out = tmp_path / "stopped.out"
    status, log = _interrupt_in_epoch_1(workspace, results, out, lambda proc: os.killpg(proc.pid, signal.SIGTERM))
    _assert_stopped_after_epoch_1("SIGTERM", status, out.read_text(), log, _fold(results))
