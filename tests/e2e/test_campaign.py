"""Campaigns end to end, through ``nnunet-transfer campaign`` and the stock ``nnUNetv2_*`` commands it starts.

One module-scoped folder with its own nnU-Net roots: target 921 fine-tuned from the session workspace's pretrained
checkpoint (tiny recipe) and trained from scratch (nnUNetTrainer_TransferTestTiny), fold 0 each, in the legacy
``trainer``/``baseline`` form; a second small campaign with a broken target (923: a label file missing) beside a good
one (924), run in the background while two runs of the main campaign start at once. A campaign killed mid-fold and
run again is the study's test (``test_study_run.py``: a study is a campaign) and the SLURM one's.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from helpers import bin_path, cli, nnunet_env

ONE, BROKEN, THREE = "Dataset921_TgtOne", "Dataset923_Broken", "Dataset924_TgtThree"
TINY = "nnUNetTrainer_TransferTestTiny"
FT = "nnUNetTrainerAdaptiveFT"
RECIPE = {"name": "campaign_e2e", "description": "3 epochs x 3 iterations, a checkpoint every epoch", "num_epochs": 3,
          "iterations_per_epoch": 3, "val_iterations_per_epoch": 1, "save_every": 1}


@dataclass
class Setup:
    root: Path
    env: dict[str, str]
    main: Path  # the campaign file: 1 target x 1 fold x 2 arms
    broken: Path  # 923 (broken) and 924, fold 0, fine-tuning only
    broken_run: subprocess.Popen
    broken_out: Path

    @property
    def workdir(self) -> Path:
        return self.root / "main.campaign"

    def log(self, task_id: str) -> Path:
        return self.workdir / "logs" / f"{task_id.replace('/', '.')}.log"


def start(path: Path, env: dict[str, str], out: Path) -> subprocess.Popen:
    """``nnunet-transfer campaign run FILE`` in its own session (process group), output to ``out``."""
    return subprocess.Popen([bin_path("nnunet-transfer"), "campaign", "run", str(path)], env=env,
                            stdout=out.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def setup(workspace, tmp_path_factory) -> Setup:
    from nnunet_transfer.demo.synthetic import make_dataset

    root = tmp_path_factory.mktemp("campaign")
    env = nnunet_env(root)
    raw = root / "raw"
    make_dataset(raw, 921, "TgtOne", shape=(32, 32, 32), seed=11)
    make_dataset(raw, 923, "Broken", shape=(32, 32, 32), seed=13)
    (raw / BROKEN / "labelsTr" / "broken_002.nii.gz").unlink()
    make_dataset(raw, 924, "TgtThree", shape=(32, 32, 32), seed=14)
    for sub in ("preprocessed", "results"):
        (root / sub).mkdir()
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    common = {"pretrained": str(workspace.checkpoint), "recipe": "recipe.yaml", "configurations": ["3d_fullres"],
              "device": "cpu"}
    main = root / "main.yaml"
    main.write_text(yaml.safe_dump({"name": "main", **common, "folds": [0],
                                    "targets": [{"dataset": 921}],
                                    "baseline": {"trainer": TINY}, "executor": {"kind": "local"}}))
    broken = root / "broken.yaml"
    broken.write_text(yaml.safe_dump({"name": "broken", **common, "folds": [0],
                                      "targets": [{"dataset": 923}, {"dataset": 924}]}))
    out = root / "broken.out"
    proc = start(broken, env, out)
    yield Setup(root, env, main, broken, proc, out)
    kill_group(proc)


def commands(log: Path) -> list[str]:
    """The nnUNetv2_train command lines a task's log shows (one per start)."""
    return [ln for ln in log.read_text().splitlines() if ln.startswith("$ ") and "nnUNetv2_train " in ln]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def finished_folds(root: Path) -> dict[Path, tuple[int, str]]:
    return {p: (p.stat().st_mtime_ns, sha(p)) for p in (root / "results").glob(f"{ONE}/*/fold_*/checkpoint_final.pth")
            if (p.parent / "validation" / "summary.json").is_file()}


def test_two_runs_at_once_share_the_work_and_a_rerun_finds_it_done(setup):
    env, main = setup.env, setup.main
    outs = [setup.root / "run_a.out", setup.root / "run_b.out"]
    runs = [start(main, env, outs[0]), start(main, env, outs[1])]
    try:
        for r in runs:
            assert r.wait(timeout=1500) in (0, 75)  # 75: it left a task to the other run (busy)
    finally:
        for r in runs:
            kill_group(r)
    before = finished_folds(setup.root)
    assert len(before) == 2

    final = cli("campaign", "run", main, env=env)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    assert final.stdout.strip().splitlines()[-1].endswith(": 3 done (3 already)")
    assert finished_folds(setup.root) == before  # finished folds are not touched again
    outputs = "".join(o.read_text() for o in outs)
    # progress: one line per task as it starts and ends, with what is left
    assert re.search(r"^\[\d+/3\] Dataset921_TgtOne 3d_fullres finetune fold 0: running \(log: .+\.log\)$",
                     outputs, re.M)
    assert re.search(r"^\[\d+/3\] Dataset921_TgtOne 3d_fullres finetune fold 0: done in \d+:\d\d \(trained\) "
                     r"\(left: \d+ tasks?(, about \d+:\d\d)?\)$", outputs, re.M)
    assert "(busy: another run works on it: pid " in outputs  # the two runs met at the same task
    # no fold was trained twice (runs A and B raced for each): one training per fold, nnU-Net's own logs agree
    fold_dirs = sorted(d for d in (setup.root / "results").glob(f"{ONE}/*/fold_*"))
    assert len(fold_dirs) == 2
    for d in fold_dirs:
        arm = "finetune" if d.parent.name.startswith(FT) else "baseline"
        cmds = commands(setup.log(f"{ONE}/3d_fullres/{arm}/{d.name}"))
        assert len(cmds) == 1 and ("-pretrained_weights" in cmds[0]) == (arm == "finetune"), cmds
        assert len(list(d.glob("training_log_*.txt"))) == 1, d
        assert (d / "checkpoint_final.pth").is_file() and (d / "validation" / "summary.json").is_file()

    status = cli("campaign", "status", main, env=env)
    assert status.returncode == 0
    rows = [ln.split()[:2] for ln in status.stdout.splitlines()[1:-1]]
    assert len(rows) == 3 and all(state == "done" for _, state in rows), status.stdout
    assert status.stdout.splitlines()[-1] == "3 tasks: 3 done"

    # the report holds nnU-Net's own numbers: every label of every fold's validation/summary.json, and nothing else
    report = cli("campaign", "report", main, env=env)
    assert report.returncode == 0, report.stderr
    assert f"wrote {setup.workdir / 'report' / 'report.csv'}" in report.stdout
    with open(setup.workdir / "report" / "report.csv", newline="") as f:
        got = {(r["dataset"], r["configuration"], r["arm"], r["fold"], r["key"], repr(float(r["dice"])))
               for r in csv.DictReader(f)}
        f.seek(0)
        labels = {r["label"] for r in csv.DictReader(f)}
    expected = set()
    for d in fold_dirs:
        summary = json.loads((d / "validation" / "summary.json").read_text())
        arm = "finetune" if d.parent.name.startswith(FT) else "baseline"
        fold = d.name.removeprefix("fold_")
        expected |= {(d.parents[1].name, "3d_fullres", arm, fold, k, repr(float(v["Dice"])))
                     for k, v in summary["mean"].items()}
        expected.add((d.parents[1].name, "3d_fullres", arm, fold, "foreground_mean",
                      repr(float(summary["foreground_mean"]["Dice"]))))
    assert len(expected) == 2 * 3 and got == expected
    assert labels == {"organ", "lesion", "mean"}  # names from dataset.json


def test_a_broken_target_fails_alone_and_is_recorded(setup):
    code = setup.broken_run.wait(timeout=1500)
    out = setup.broken_out.read_text()
    assert code == 1, out
    # file order: the broken target first, the good one still runs
    assert re.search(rf"^\[1/4\] {BROKEN} nnUNetPlans prepare: failed after \d+:\d\d: nnUNetv2_plan_and_preprocess "
                     rf"exited with status 1: .+ \(log: .+\.log\)", out, re.M), out
    assert re.search(rf"^\[2/4\] {BROKEN} 3d_fullres finetune fold 0: blocked \(its prepare step failed", out, re.M)
    assert re.search(rf"^\[4/4\] {THREE} 3d_fullres finetune fold 0: done in ", out, re.M), out
    assert "2 done, 1 failed, 1 blocked" in out.splitlines()[-2]
    record = json.loads((setup.root / "broken.campaign" / "failures" / f"{BROKEN}.nnUNetPlans.prepare.json").read_text())
    assert record["task"] == f"{BROKEN}/nnUNetPlans/prepare" and record["exit_code"] == 1
    assert "--verify_dataset_integrity" in record["command"]
    log = Path(record["log"])
    assert log.is_file() and "broken_002" in log.read_text()  # nnU-Net's own complaint, in the log named
    assert (setup.root / "results" / THREE / f"{FT}__nnUNetPlans__3d_fullres" / "fold_0" / "validation"
            / "summary.json").is_file()

    status = cli("campaign", "status", setup.broken, env=setup.env)
    assert status.returncode == 0
    states = {ln.split()[0]: ln.split()[1] for ln in status.stdout.splitlines()[1:-1]}
    assert states == {f"{BROKEN}/nnUNetPlans/prepare": "failed", f"{BROKEN}/3d_fullres/finetune/fold_0": "blocked",
                      f"{THREE}/nnUNetPlans/prepare": "done", f"{THREE}/3d_fullres/finetune/fold_0": "done"}
    assert str(log) in status.stdout


def test_find_best_step_ends_each_target(setup):
    """``find_best``: once a target's folds are done (here by the run above), nnUNetv2_find_best_configuration picks
    the best of its models; trainings are not touched, a second run finds the step done."""
    data = yaml.safe_load(setup.main.read_text())
    data["find_best"] = {"ensembling": False, "arms": ["finetune", "baseline"]}  # folds trained without --npz
    path = setup.root / "main_best.yaml"
    path.write_text(yaml.safe_dump(data))
    before = finished_folds(setup.root)
    run = cli("campaign", "run", path, env=setup.env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for target in (ONE,):
        assert re.search(rf"^\[\d+/4\] {target} nnUNetPlans find-best: done in \d+:\d\d \(best configuration in "
                         rf".+/{target}/inference_information\.json\)", run.stdout, re.M), run.stdout
        info = json.loads((setup.root / "results" / target / "inference_information.json").read_text())
        assert {m["trainer"] for m in info["considered_models"]} == {FT, TINY} and not info["ensembling_allowed"]
        assert info["folds"] == [0]
        log = setup.workdir / "logs" / f"{target}.nnUNetPlans.find_best.log"
        assert f"nnUNetv2_find_best_configuration {int(target[7:10])} -c 3d_fullres -tr {FT} {TINY}" in \
            log.read_text()
    assert run.stdout.strip().splitlines()[-1].endswith(": 4 done (3 already)")
    assert finished_folds(setup.root) == before  # no fold trained again
    status = cli("campaign", "status", path, env=setup.env)
    assert status.stdout.splitlines()[-1] == "4 tasks: 4 done"
    again = cli("campaign", "run", path, env=setup.env)
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1].endswith(": 4 done (4 already)")
