"""The trainer's per-epoch bookkeeping (issue 14): lr_table.json written row by row with the same text as before,
the schedule panel drawn in a background thread and pasted under nnU-Net's progress.png in order, its failures
logged. Real nnU-Net trainers built in-process (no data); epochs driven through nnU-Net's own hooks."""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import RECIPES, build_trainer
from PIL import Image

from nnunet_transfer.core.background import LatestJobWorker
from nnunet_transfer.core.png import append_rows
from nnunet_transfer.core.schedules.lr_table import LRTable
from nnunet_transfer.core.schedules.plot import SchedulePanel, add_schedule_panel, render_schedule_panel
from nnunet_transfer.trainers.adaptive_ft import LR_TABLE_FILE, nnUNetTrainerAdaptiveFT


@pytest.fixture
def build(tmp_path, monkeypatch):
    """A trainer as ``get_trainer_from_args`` builds it (progressive recipe: the trainable set and rates change
    every epoch), initialized on CPU, checkpoints off (nothing here needs them)."""
    monkeypatch.setenv("NNUNET_TRANSFER_RECIPE", str(RECIPES / "progressive.yaml"))

    def build(continue_training: bool = False) -> nnUNetTrainerAdaptiveFT:
        trainer = build_trainer(tmp_path, monkeypatch, continue_training=continue_training)
        trainer.disable_checkpointing = True
        return trainer

    return build


def start_epoch(trainer: nnUNetTrainerAdaptiveFT) -> None:
    """The hooks nnU-Net's run_training calls before the training steps of an epoch."""
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()


def end_epoch(trainer: nnUNetTrainerAdaptiveFT) -> None:
    """What nnU-Net logs after an epoch's steps (on_train_epoch_end, on_validation_epoch_end), then on_epoch_end."""
    e = trainer.current_epoch
    trainer.logger.log("train_losses", 0.9 - 0.1 * e, e)
    trainer.logger.log("val_losses", 0.95 - 0.1 * e, e)
    trainer.logger.log("dice_per_class_or_region", [0.1 * e, 0.05 * e], e)
    trainer.logger.log("mean_fg_dice", 0.075 * e, e)
    trainer.on_epoch_end()


def run_epochs(trainer: nnUNetTrainerAdaptiveFT, n: int) -> None:
    for _ in range(n):
        start_epoch(trainer)
        end_epoch(trainer)


def pixels(png: Path) -> np.ndarray:
    with Image.open(png) as img:
        assert img.mode == "RGBA"
        return np.asarray(img)


def expected_progress(trainer: nnUNetTrainerAdaptiveFT, folder: Path) -> np.ndarray:
    """nnU-Net's plot of the epochs so far (drawn again into ``folder``) with the panel of the trainer's rows pasted
    under it through Pillow: the synchronous way the panel was added before (issue 14)."""
    folder.mkdir(exist_ok=True)
    trainer.logger.plot_progress_png(str(folder))
    with Image.open(folder / "progress.png") as img:
        base = img.convert("RGBA")
    panel = Image.fromarray(render_schedule_panel(trainer._lr_table.rows, base.width), "RGBA")
    out = Image.new("RGBA", (base.width, base.height + panel.height), "white")
    out.paste(base, (0, 0))
    out.paste(panel, (0, base.height))
    return np.asarray(out)


# --- lr_table.json ------------------------------------------------------------------------------------------------
def old_row(trainer: nnUNetTrainerAdaptiveFT, epoch: int) -> dict:
    """The row _log_schedule wrote before issue 14, computed from the trainer's state as it did."""
    lrs = {pg["name"]: pg["lr"] for pg in trainer.optimizer.param_groups}
    total = sum(g.numel for g in trainer.param_groups)
    frac = sum(g.numel for g in trainer.param_groups if g.name in trainer._trainable) / total
    return {"epoch": epoch, "lr": lrs, "trainable": list(trainer._trainable), "trainable_fraction": frac}


def test_lr_table_text_is_the_old_serialisation_through_a_run_and_a_resume(build, tmp_path):
    """Every epoch's file is json.dumps(rows, indent=1) of the rows the trainer kept before (issue 14: each row is now
    serialised once); a resumed run drops the rows of its epoch and later ones."""
    trainer = build()
    table = Path(trainer.output_folder) / LR_TABLE_FILE
    reference: list[dict] = []
    for epoch in range(3):
        start_epoch(trainer)
        reference = [r for r in reference if r["epoch"] < epoch]
        reference.append(old_row(trainer, epoch))
        assert table.read_text() == json.dumps(reference, indent=1)
        end_epoch(trainer)
    trainer._panel_worker.close()
    assert [len(r["trainable"]) for r in reference] == [3, 4, 5]  # the schedule did change every epoch
    assert len({r["lr"]["heads"] for r in reference}) == 3 and reference[1]["lr"]["encoder.stage2"] > 0

    # --c from the checkpoint of epoch 1 (load_checkpoint restores the epoch and nnU-Net's logging): row 0 stays,
    # rows 1 and 2 are redone
    resumed = build(continue_training=True)
    resumed.current_epoch = 1
    resumed.logger.load_checkpoint({k: v[:1] for k, v in trainer.logger.get_checkpoint().items()})
    reference = json.loads(table.read_text())
    for epoch in range(1, 3):
        start_epoch(resumed)
        reference = [r for r in reference if r["epoch"] < epoch]
        reference.append(old_row(resumed, epoch))
        assert table.read_text() == json.dumps(reference, indent=1)
        end_epoch(resumed)
    resumed._panel_worker.close()
    assert [r["epoch"] for r in json.loads(table.read_text())] == [0, 1, 2]


@pytest.mark.parametrize("rows", [
    [],
    [{"epoch": 0, "lr": {}, "trainable": [], "trainable_fraction": 0.0}],
    [{"epoch": 0, "lr": {"é\n\"x": 1e-300, "b": math.nan}, "trainable": ["é\n\"x"], "trainable_fraction": 1 / 3},
     {"epoch": 1, "lr": {"é\n\"x": 0.1, "b": math.inf}, "trainable": [], "trainable_fraction": 1.0, "extra": [[1]]}],
])
def test_lr_table_rows_text_equals_json_dumps(tmp_path, rows):
    """Row texts joined equal json.dumps of the list for awkward content (escapes, non-finite floats, nesting)."""
    path = tmp_path / "t.json"
    path.write_text(json.dumps(rows, indent=1))
    table = LRTable.load(path)
    new = {"epoch": 1, "lr": {"a": 2.5e-05}, "trainable": ["a", "b"], "trainable_fraction": 0.5}
    table.record(new)
    expected = [r for r in rows if r["epoch"] < 1] + [new]
    assert path.read_text() == json.dumps(expected, indent=1)
    assert json.dumps(table.rows, indent=1) == path.read_text()  # the rows kept are the rows written


# --- the panel, drawn in the background -------------------------------------------------------------------------
def test_the_worker_adds_the_same_panel_as_the_synchronous_path(build, tmp_path):
    trainer = build()
    progress = Path(trainer.output_folder) / "progress.png"
    run_epochs(trainer, 2)
    trainer.on_train_end()  # waits for the last panel
    got = pixels(progress)
    want = expected_progress(trainer, tmp_path / "reference")
    assert got.shape == want.shape and got.shape[1] == 3000
    assert got.shape[0] == 5400 + 1050  # nnU-Net's 54 inches at 100 dpi, the panel 0.35 x the width
    assert np.array_equal(got, want)
    panel = got[5400:]
    assert len(np.unique(panel.reshape(-1, 4), axis=0)) > 10  # something was drawn there
    # and the synchronous function on nnU-Net's plot alone gives the same image
    add_schedule_panel(tmp_path / "reference" / "progress.png", trainer._lr_table.rows)
    assert np.array_equal(pixels(tmp_path / "reference" / "progress.png"), got)
    assert sorted(p.name for p in Path(trainer.output_folder).glob(".*")) == []  # no temporary file left


class SlowPanel(SchedulePanel):
    """The real panel, started late: a job still running when the next epoch ends."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.jobs: list[tuple[int, float, float]] = []  # (last epoch in the rows, start, end)

    def add_to(self, png, rows) -> None:
        start = time.time()
        time.sleep(self.delay)
        super().add_to(png, rows)
        self.jobs.append((rows[-1]["epoch"], start, time.time()))


def test_a_panel_never_lands_on_a_newer_progress_png(build, tmp_path):
    """Epoch 0's panel is still being drawn when epoch 1 ends: nnU-Net's new plot is written only after it, and
    the file ends as epoch 1's plot with epoch 1's panel (not epoch 0's plot, nor two panels)."""
    trainer = build()
    trainer._panel = slow = SlowPanel(delay=0.5)
    progress = Path(trainer.output_folder) / "progress.png"
    start_epoch(trainer)
    end_epoch(trainer)
    submitted = time.time()
    start_epoch(trainer)
    end_epoch(trainer)  # waits for epoch 0's panel before nnU-Net plots
    plotted = progress.stat().st_mtime
    assert slow.jobs and slow.jobs[0][0] == 0 and slow.jobs[0][2] - submitted >= 0.4
    assert plotted >= slow.jobs[0][2]  # nnU-Net's plot of epoch 1 was written after epoch 0's panel
    trainer._wait_for_panel()
    assert [j[0] for j in slow.jobs] == [0, 1]
    assert np.array_equal(pixels(progress), expected_progress(trainer, tmp_path / "reference"))


def test_a_failing_panel_is_logged_and_training_goes_on(build, capsys):
    class Broken(SchedulePanel):
        def panel(self, rows, width):
            raise RuntimeError(f"no panel for epoch {rows[-1]['epoch']}")

    trainer = build()
    trainer._panel = Broken()
    run_epochs(trainer, 2)  # epoch 0's failure is reported when epoch 1 ends
    log = Path(trainer.log_file).read_text()
    assert "RuntimeError: no panel for epoch 0" in log and "no panel for epoch 1" not in log
    trainer.on_train_end()  # epoch 1's failure
    log = Path(trainer.log_file).read_text()
    assert log.count("schedule panel not added to progress.png (training goes on)") == 4  # traceback + summary each
    assert 'in panel\n    raise RuntimeError(f"no panel' in log  # the traceback, in the log file
    assert "RuntimeError: no panel for epoch 1" in log and log.rstrip().endswith("Training done.")
    out = capsys.readouterr().out
    assert out.count("schedule panel not added to progress.png (training goes on): RuntimeError: no panel") == 2
    assert trainer.current_epoch == 2
    with Image.open(Path(trainer.output_folder) / "progress.png") as img:
        assert img.size == (3000, 5400)  # nnU-Net's plot, untouched
    assert json.loads((Path(trainer.output_folder) / LR_TABLE_FILE).read_text())[-1]["epoch"] == 1


def test_the_panel_is_drawn_again_only_when_its_rows_or_width_change(tmp_path):
    rows = [{"epoch": e, "lr": {"heads": 0.01}, "trainable": ["heads"], "trainable_fraction": 1.0} for e in range(3)]
    panel = SchedulePanel()
    first = panel.panel(rows, 600)
    assert panel.panel([dict(r) for r in rows], 600) is first and panel.renders == 1
    assert panel.panel(rows[:2], 600).shape == first.shape == (210, 600, 4) and panel.renders == 2
    assert panel.panel(rows[:2], 800).shape == (280, 800, 4) and panel.renders == 3
    assert np.array_equal(panel.panel(rows, 600), first) and panel.renders == 4


# --- the worker -----------------------------------------------------------------------------------------------
def test_latest_job_wins_and_failures_are_handed_over_once():
    worker = LatestJobWorker("test")
    gate, ran = threading.Event(), []
    worker.submit(gate.wait)  # the job under way
    time.sleep(0.05)
    for i in range(3):
        worker.submit(ran.append, i)  # each replaces the one before: only the last runs
    worker.submit(ran.append, 3)
    assert worker.replaced == 3
    gate.set()
    assert worker.wait(5) == [] and ran == [3]
    worker.submit(lambda: 1 / 0)
    failures = worker.wait(5)
    assert len(failures) == 1 and failures[0].rstrip().endswith("ZeroDivisionError: division by zero")
    assert worker.wait(5) == []
    thread = worker._thread
    assert thread is not None and thread.daemon and thread.name == "test"
    worker.close(5)
    assert not thread.is_alive()
    worker.submit(ran.append, 4)  # a new thread after close
    assert worker.close(5) == [] and ran == [3, 4]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_the_worker_thread_runs_at_a_lower_priority_than_training():
    worker = LatestJobWorker("test", nice=5)
    seen: list[int] = []
    worker.submit(lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
    assert worker.close(5) == []
    main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen == [min(19, main + 5)] and os.getpriority(os.PRIO_PROCESS, 0) == main


# --- appending rows to a PNG ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["RGBA", "RGB", "L", "P", "LA"])
@pytest.mark.parametrize("panel_width", [37, 50, 64])
def test_rows_appended_under_any_png_equal_pillows_paste(tmp_path, mode, panel_width):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (23, 50, 4), dtype=np.uint8)
    rgba[..., 3] = 255 if mode in ("RGB", "L", "P") else rgba[..., 3]
    base = Image.fromarray(rgba, "RGBA").convert(mode)
    base.save(tmp_path / "a.png")
    panel = rng.integers(0, 256, (7, panel_width, 4), dtype=np.uint8)
    assert append_rows(tmp_path / "a.png", panel) == (50, 30)
    want = Image.new("RGBA", (50, 30), "white")
    want.paste(base.convert("RGBA"), (0, 0))
    want.paste(Image.fromarray(panel, "RGBA"), (0, 23))
    assert np.array_equal(pixels(tmp_path / "a.png"), np.asarray(want))
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
