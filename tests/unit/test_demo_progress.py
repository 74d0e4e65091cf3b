"""The demo's console progress (parsed from nnU-Net's own output lines), its subprocess runner, and the validation
Dice by label name (through dataset.json, labels and regions)."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from types import SimpleNamespace

import numpy as np
import pytest
from nnunetv2.evaluation.evaluate_predictions import save_summary_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunet_transfer.cli import build_parser
from nnunet_transfer.core.schedules.recipes import load_recipe
from nnunet_transfer.demo.dice import dice_by_name, foreground_names, format_dice, format_dice_comparison
from nnunet_transfer.demo.progress import StepProgress, format_elapsed, parse_line
from nnunet_transfer.demo.run import _scratch_recipe, run_step
from nnunet_transfer.errors import TransferError

LOG = "/w/demo.log"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def nnunet_epoch_lines(tmp_path, capsys, epoch=1, train_loss=-0.41237, dice=(0.52, 0.3112), seconds=12.3456):
    """What nnU-Net 2.8.1 prints for one epoch: its own print_to_log_file, called with the arguments of
    on_train_epoch_start / on_epoch_end. Returns (console lines, log-file lines)."""
    trainer = SimpleNamespace(local_rank=0, log_file=str(tmp_path / "training_log.txt"))
    log = nnUNetTrainer.print_to_log_file
    log(trainer, "")
    log(trainer, f"Epoch {epoch}")
    log(trainer, f"Current learning rate: {np.round(0.00536, decimals=5)}")
    log(trainer, "train_loss", np.round(np.float64(train_loss), decimals=4))
    log(trainer, "val_loss", np.round(np.float64(-0.35), decimals=4))
    log(trainer, "Pseudo dice", [np.round(np.float32(d), decimals=4) for d in dice])
    log(trainer, f"Epoch time: {np.round(np.float64(seconds), decimals=2)} s")
    log(trainer, f"Yayy! New best EMA pseudo Dice: {np.round(np.float32(0.41), decimals=4)}")
    console = capsys.readouterr().out.splitlines(keepends=True)
    return console, (tmp_path / "training_log.txt").read_text().splitlines(keepends=True)


# --- parsing nnU-Net's lines -----------------------------------------------------------------------------------
@pytest.mark.parametrize("line, expected", [
    ("2026-11-24 12:22:28.262980: Epoch 0 \n", ("epoch", 0)),  # log file: a space after every argument
    ("2026-11-24 12:22:28: Epoch 12\n", ("epoch", 12)),  # str(datetime) drops a zero microsecond
    ("2026-11-24 12:22:28.896596: train_loss 0.4967", ("train_loss", 0.4967)),
    ("2026-11-24 12:22:28.896596: train_loss -0.4123", ("train_loss", -0.4123)),
    ("2026-11-24 12:22:28.896761: val_loss nan", ("val_loss", None)),  # nan: compared below
    ("2026-11-24 12:22:28.896794: Pseudo dice [np.float32(0.0), np.float32(0.55)] ", ("pseudo_dice", [0.0, 0.55])),
    ("2026-11-24 12:22:28.896794: Pseudo dice [0.912, 0.8]", ("pseudo_dice", [0.912, 0.8])),  # numpy < 2
    ("2026-11-24 12:22:28.896839: Epoch time: 0.63 s", ("epoch_time", 0.63)),
    ("2026-11-24 12:22:31.690322: Training done. ", ("training_done", None)),
    ("2026-11-24 12:22:31.707497: predicting aniso_000 ", ("predicting", "aniso_000")),
    ("2026-11-24 12:22:38.921411: Mean Validation Dice:  0.41409488714877934", ("validation_dice", 0.41409488714877934)),
    ("2026-11-24 12:22:28.263085: Current learning rate: 0.01", None),
    ("2026-11-24 12:22:28.896863: Yayy! New best EMA pseudo Dice: 0.2750000059604645", None),
    ("Epoch time is not a number: soon", None),
    ("Pseudo dice [oops]", None),
])
def test_parse_line_reads_nnunet_lines(line, expected):
    got = parse_line(line)
    if expected is not None and expected[1] is None and expected[0] == "val_loss":
        assert got[0] == "val_loss" and np.isnan(got[1])
    else:
        assert got == expected


@pytest.mark.parametrize("source", ["console", "log file"])
def test_an_epoch_printed_by_nnunet_becomes_one_line(tmp_path, capsys, source):
    console, logfile = nnunet_epoch_lines(tmp_path, capsys)
    lines = console if source == "console" else logfile
    assert any(line.startswith("20") and "Pseudo dice [np.float32(0.52), np.float32(0.3112)]" in line
               for line in lines)  # the format this parser is for (numpy >= 2 reprs inside nnU-Net's list)
    clock = Clock()
    p = StepProgress("fine-tune", LOG, total_epochs=3, label_names=["edema", "lesion"], clock=clock)
    p.begin(["/venv/bin/nnUNetv2_train", "991"])
    clock.now += 41
    out = [o for line in lines for o in p.feed(line)]
    assert out == ["  [fine-tune] epoch 2/3  train loss -0.41  pseudo Dice [edema 0.52, lesion 0.31]  12 s/epoch  "
                   "elapsed 0:41  (log: /w/demo.log)"]
    stats = p.epochs[-1]
    assert (stats.epoch, stats.train_loss, stats.val_loss, stats.epoch_time) == (1, -0.4124, -0.35, 12.35)
    assert stats.pseudo_dice == pytest.approx([0.52, 0.3112])


def test_epoch_line_without_total_names_or_fast_epochs(tmp_path, capsys):
    console, _ = nnunet_epoch_lines(tmp_path, capsys, epoch=0, dice=(0.5, 0.25, 0.125), seconds=0.634)
    p = StepProgress("pretrain", LOG, label_names=["organ", "lesion"], clock=Clock())  # 2 names, 3 values
    out = [o for line in console for o in p.feed(line)]
    assert out == ["  [pretrain] epoch 1  train loss -0.41  pseudo Dice [0.50, 0.25, 0.12]  0.6 s/epoch  elapsed 0:00  "
                   "(log: /w/demo.log)"]


def test_begin_names_the_command_and_the_log_then_done_the_time():
    clock = Clock()
    p = StepProgress("preprocess", "/tmp/x/demo.log", clock=clock)
    assert p.begin(["/venv/bin/nnUNetv2_plan_and_preprocess", "-d", "990"]) == [
        "[preprocess] nnUNetv2_plan_and_preprocess -d 990",
        "  [preprocess] nnU-Net's output goes to /tmp/x/demo.log"]
    clock.now += 3723
    assert p.done() == ["  [preprocess] done in 1:02:03"]


def test_heartbeat_after_15_seconds_of_silence_with_the_latest_message():
    clock = Clock()
    p = StepProgress("preprocess", LOG, clock=clock)
    p.begin(["nnUNetv2_plan_and_preprocess"])
    clock.now += 14.9
    assert p.tick() == []
    clock.now += 0.1
    assert p.tick() == ["  [preprocess] running  elapsed 0:15  (log: /w/demo.log)"]
    assert p.tick() == []  # just printed
    # a finished tqdm bar (its updates joined by carriage returns), a dict of plans and a warning's source line
    for line in ["Preprocessing cases:   0%|          | 0/6 [00:00<?, ?it/s]\rPreprocessing cases: 100%|██████████| "
                 "6/6 [00:30<00:00,  5.00s/it]\n",
                 "{'data_identifier': 'nnUNetPlans_3d_fullres', 'batch_size': 2}\n", "  warnings.warn(\n"]:
        assert p.feed(line) == []
    clock.now += 30
    assert p.tick() == ["  [preprocess] running (last output: Preprocessing cases: 100% 6/6 [00:30<00:00,  "
                        "5.00s/it])  elapsed 0:45  (log: /w/demo.log)"]
    p.feed("Preprocessing dataset Dataset991_DemoTarget with a name long enough to be cut short here, really\n")
    clock.now += 60
    assert p.tick() == ["  [preprocess] running (last output: Preprocessing dataset Dataset991_DemoTarget with a "
                        "name l...)  elapsed 1:45  (log: /w/demo.log)"]


def test_heartbeats_in_a_row_slow_down_to_one_a_minute_until_something_happens():
    clock = Clock()
    p = StepProgress("pretrain", LOG, total_epochs=1, clock=clock, budget="1 epoch x 250 iterations")
    assert p.begin(["nnUNetv2_train"])[1] == "  [pretrain] 1 epoch x 250 iterations; nnU-Net's output goes to /w/demo.log"
    p.feed("2026-11-24 12:22:28.262980: Epoch 0\n")
    beats = []
    for _ in range(400):
        clock.now += 1
        beats += [clock.now - 100 for _ in p.tick()]
    assert beats == [15, 45, 105, 165, 225, 285, 345]
    assert p.feed("2026-11-24 12:22:28.896839: Epoch time: 380 s\n") == [  # a progress line: every 15 s again
        "  [pretrain] epoch 1/1  380 s/epoch  elapsed 6:40  (log: /w/demo.log)"]
    clock.now += 14
    assert p.tick() == []
    clock.now += 1
    assert p.tick() == ["  [pretrain] running  elapsed 6:55  (log: /w/demo.log)"]


def test_heartbeat_during_training_says_which_epoch_then_validation():
    clock = Clock()
    p = StepProgress("fine-tune", LOG, total_epochs=3, clock=clock)
    p.begin(["nnUNetv2_train"])
    p.feed("2026-11-24 12:22:28.262980: Epoch 0\n")
    clock.now += 16
    assert p.tick() == ["  [fine-tune] epoch 1/3 running  elapsed 0:16  (log: /w/demo.log)"]
    clock.now += 4
    assert p.feed("2026-11-24 12:22:31.690322: Training done.\n") == [
        "  [fine-tune] training done; validating (predicting the validation cases)  elapsed 0:20  (log: /w/demo.log)"]
    p.feed("2026-11-24 12:22:31.707497: predicting case_003\n")
    clock.now += 15
    assert p.tick() == ["  [fine-tune] validating: predicting case_003  elapsed 0:35  (log: /w/demo.log)"]
    p.feed("2026-11-24 12:22:38.921411: Mean Validation Dice:  0.5\n")
    assert p.validation_dice == 0.5


def test_format_elapsed():
    assert [format_elapsed(s) for s in (0, 41.9, 600, 3600, 3723)] == ["0:00", "0:41", "10:00", "1:00:00", "1:02:03"]


# --- running a command ------------------------------------------------------------------------------------------
SCRIPT = textwrap.dedent("""
    import sys, time
    print("Using device: cpu")
    for e in range(2):
        print(f"2026-11-24 12:22:28.262980: Epoch {e}")
        print("2026-11-24 12:22:28.896596: train_loss -0.5")
        print("2026-11-24 12:22:28.896794: Pseudo dice [np.float32(0.25)]")
        print("2026-11-24 12:22:28.896839: Epoch time: 1.5 s")
        time.sleep(0.05)
    print("warning on stderr", file=sys.stderr)
    sys.exit(int(sys.argv[1]))
""")


def test_run_step_streams_to_the_log_and_prints_epochs(tmp_path, capsys):
    log = tmp_path / "demo.log"
    log.write_text("earlier step\n")
    run_step([sys.executable, "-c", SCRIPT, "0"], {}, log,
             StepProgress("fine-tune", log, total_epochs=2, label_names=["lesion"]), poll=0.05)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"[fine-tune] {sys.executable.rsplit('/', 1)[-1]} -c {SCRIPT} 0".splitlines()[0]
    epochs = [line for line in out if "s/epoch" in line]
    assert [e.split("  elapsed")[0] for e in epochs] == [
        "  [fine-tune] epoch 1/2  train loss -0.50  pseudo Dice [lesion 0.25]  1.5 s/epoch",
        "  [fine-tune] epoch 2/2  train loss -0.50  pseudo Dice [lesion 0.25]  1.5 s/epoch"]
    assert all(e.endswith(f"(log: {log})") for e in epochs)
    assert out[-1].startswith("  [fine-tune] done in 0:0")
    text = log.read_text()
    assert text.startswith("earlier step\n\n$ ")  # appended, each command headed by its command line
    assert "Using device: cpu\n" in text and "Epoch time: 1.5 s\n" in text and "warning on stderr\n" in text


def test_run_step_failure_names_exit_code_log_and_tail(tmp_path, capsys):
    log = tmp_path / "demo.log"
    with pytest.raises(TransferError, match=r"(?s)\[pretrain\] command failed with exit code 3 \(log: .*demo\.log\):"
                                            r"\n.*warning on stderr"):
        run_step([sys.executable, "-c", SCRIPT, "3"], {}, log, StepProgress("pretrain", log), poll=0.05)
    assert "done in" not in capsys.readouterr().out


def test_run_step_heartbeat_also_while_unparsed_lines_stream_in(tmp_path, capsys):
    log = tmp_path / "demo.log"
    script = "import time\nfor i in range(40):\n    print(f'Noise {i}')\n    time.sleep(0.02)"
    run_step([sys.executable, "-c", script], {}, log, StepProgress("preprocess", log, heartbeat=0.2), poll=5)
    beats = [line for line in capsys.readouterr().out.splitlines() if "running (last output: Noise" in line]
    assert beats  # the queue never ran empty for ``poll`` seconds: the heartbeat comes from the lines themselves
    assert "Noise 39\n" in log.read_text()


def test_run_step_returns_when_a_leftover_process_keeps_the_pipe_open(tmp_path, capsys):
    """nnU-Net's data-loader workers inherit the output pipe: once the command exited, wait ``drain`` s, no more."""
    log = tmp_path / "demo.log"
    script = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(4)']); "
              "print('Training done.')")
    start = time.monotonic()
    run_step([sys.executable, "-c", script], {}, log, StepProgress("fine-tune", log), poll=0.05, drain=0.3)
    assert time.monotonic() - start < 3
    assert "Training done.\n" in log.read_text()
    assert "done in" in capsys.readouterr().out


# --- Dice by label name -----------------------------------------------------------------------------------------
def _summary(tmp_path, means: dict, foreground: float) -> dict:
    """A summary.json written by nnU-Net's own save_summary_json (region tuples as keys become strings)."""
    results = {"mean": {k: {"Dice": v} for k, v in means.items()}, "foreground_mean": {"Dice": foreground},
               "metric_per_case": []}
    save_summary_json(results, str(tmp_path / "summary.json"))
    return json.loads((tmp_path / "summary.json").read_text())


def test_dice_by_label_name(tmp_path):
    labels = {"background": 0, "edema": 1, "lesion": 2}
    summary = _summary(tmp_path, {1: 0.9771, 2: 0.8994}, 0.93825)
    assert list(summary["mean"]) == ["1", "2"]
    assert dice_by_name(summary, labels) == {"edema": 0.9771, "lesion": 0.8994}
    assert format_dice(summary, labels) == "mean 0.938 (edema 0.977, lesion 0.899)"


def test_dice_in_label_order_not_the_sorted_keys_of_summary_json(tmp_path):
    labels = {"background": 0, "a": 2, "b": 10, "ignore": 11}
    summary = _summary(tmp_path, {2: 0.5, 10: 0.25}, 0.375)
    assert list(summary["mean"]) == ["10", "2"]  # sort_keys=True
    assert list(dice_by_name(summary, labels)) == ["a", "b"]


def test_dice_by_region_name(tmp_path):
    labels = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing": [3]}
    lm = LabelManager(labels, regions_class_order=[1, 2, 3])
    summary = _summary(tmp_path, {r: d for r, d in zip(lm.foreground_regions, (0.9, 0.8, 0.7), strict=True)}, 0.8)
    assert set(summary["mean"]) == {"(1, 2, 3)", "(2, 3)", "(3,)"}
    assert dice_by_name(summary, labels) == {"whole tumor": 0.9, "tumor core": 0.8, "enhancing": 0.7}
    assert foreground_names(labels) == ["whole tumor", "tumor core", "enhancing"]


def test_unnamed_and_nan_dice(tmp_path):
    summary = _summary(tmp_path, {1: float("nan"), 4: 0.5}, 0.5)
    assert format_dice(summary, {"background": 0, "edema": 1}) == "mean 0.500 (edema nan, label 4 0.500)"
    with pytest.raises(TransferError, match="no 'mean' entry"):
        dice_by_name({"foreground_mean": {}}, {"background": 0})


@pytest.mark.parametrize("labels, regions_class_order", [
    ({"background": 0, "lesion": 2, "edema": 1}, None),  # labels: sorted by value
    ({"background": 0, "x": [3], "y": 1}, None),  # a one-label list is a label
    ({"background": 0, "enhancing": 3, "whole": [1, 2, 3], "core": [2, 3], "ignore": 4}, [3, 1, 2]),  # regions
])
def test_foreground_names_follow_nnunets_order(labels, regions_class_order):
    """The pseudo Dice entries come in the label manager's order: the names must too."""
    lm = LabelManager(labels, regions_class_order=regions_class_order)
    fg = lm.foreground_regions if lm.has_regions else lm.foreground_labels

    def name(value):
        return next(n for n, v in labels.items()
                    if v == value or (isinstance(v, list) and tuple(v) == value) or v == [value])

    assert foreground_names(labels) == [name(v) for v in fg]


def test_dice_comparison_lines(tmp_path):
    labels = {"background": 0, "edema": 1, "lesion": 2}
    tuned = _summary(tmp_path, {1: 0.977, 2: 0.899}, 0.938)
    scratch = _summary(tmp_path, {1: 0.5, 2: 0.25}, 0.375)
    assert format_dice_comparison([("fine-tuned", tuned), ("from scratch", scratch)], labels) == [
        "  fine-tuned:   mean 0.938 (edema 0.977, lesion 0.899)",
        "  from scratch: mean 0.375 (edema 0.500, lesion 0.250)",
        "  difference:   mean +0.563 (edema +0.477, lesion +0.649)"]


# --- --baseline ---------------------------------------------------------------------------------------------------
def test_scratch_recipe_keeps_the_budget_and_needs_no_weights(tmp_path):
    quick = load_recipe("quick")
    assert quick.pretrained.required
    scratch = load_recipe(_scratch_recipe(quick, tmp_path / "quick_from_scratch.yaml"))
    assert scratch.pretrained.required is False
    assert scratch.name == "quick_from_scratch"
    keep = {"name", "description", "pretrained", "source"}
    assert scratch.model_dump(exclude=keep) == quick.model_dump(exclude=keep)
    assert (scratch.num_epochs, scratch.iterations_per_epoch) == (3, 25)


def test_cli_baseline_flag():
    parser = build_parser()
    assert parser.parse_args(["demo"]).baseline is False
    args = parser.parse_args(["demo", "--baseline", "--workdir", "w"])
    assert (args.baseline, args.workdir) == (True, "w")
