"""Running tasks without training: busy, blocked and finished tasks, failure records, the dry run (changes nothing),
the status table and the local executor's progress and exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from campaign_helpers import ALPHA, BETA, campaign_dict, finish_fold, make_roots, tree_snapshot, write_campaign

from nnunet_transfer.campaigns.execute import TaskExecution, describe_task, read_failure
from nnunet_transfer.campaigns.runner import campaign_status, format_status, run_campaign
from nnunet_transfer.campaigns.spec import load_campaign
from nnunet_transfer.core.preemption import PREEMPTED_EXIT_CODE

HOLD = textwrap.dedent("""
    import sys, time
    from nnunet_transfer.campaigns.locks import TaskLock
    assert TaskLock(sys.argv[1], sys.argv[2]).try_acquire()
    print("locked", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def campaign(tmp_path, monkeypatch):
    make_roots(tmp_path, monkeypatch)
    return load_campaign(write_campaign(tmp_path / "c.yaml", campaign_dict()))


@pytest.fixture
def hold(campaign):
    """Hold a task's lock from another process, as a second ``campaign run`` would."""
    procs = []

    def start(task):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(campaign.lock_path(task)), task.id], env=env,
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "locked"
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def prepared_plans(tmp_path, dataset=ALPHA, configurations=("3d_fullres",)):
    """A plans file without the data: enough for a prepare step that fails before running any command."""
    folder = tmp_path / "preprocessed" / dataset
    folder.mkdir(parents=True, exist_ok=True)
    confs = {c: {"data_identifier": f"nnUNetPlans_{c}"} for c in configurations}
    (folder / "nnUNetPlans.json").write_text(json.dumps({"configurations": confs}))


def prepared_data(tmp_path, dataset=ALPHA, num_cases=2):
    """Plans and complete preprocessed data (as far as the campaign looks: one .pkl per case, ground truth copies)."""
    prepared_plans(tmp_path, dataset)
    folder = tmp_path / "preprocessed" / dataset
    (folder / "dataset.json").write_text("{}")
    for sub, suffix in (("nnUNetPlans_3d_fullres", ".pkl"), ("gt_segmentations", ".nii.gz")):
        (folder / sub).mkdir()
        for i in range(num_cases):
            (folder / sub / f"{dataset.split('_')[1].lower()}_{i:03d}{suffix}").write_bytes(b"")


def finish_all(campaign):
    for t in campaign.train_tasks:
        finish_fold(t.fold_dir)


def test_busy_task_is_skipped_with_the_holder_named(campaign, hold):
    task = campaign.train_tasks[0]
    proc = hold(task)
    outcome = TaskExecution(campaign, task.id).run()
    assert outcome.status == "busy" and f"pid {proc.pid}" in outcome.message
    view = describe_task(campaign, task, "cpu")
    assert view.state == "running" and f"pid {proc.pid}" in view.detail
    assert not task.fold_dir.exists()  # nothing ran


def test_failed_prepare_is_recorded_and_blocks_its_folds_until_it_succeeds(campaign, tmp_path):
    prepared_plans(tmp_path, configurations=("2d",))  # the plans lack 3d_fullres: the prepare fails, no command runs
    prep = campaign.prepare_tasks[0]
    out = TaskExecution(campaign, prep.id).run()
    assert out.status == "failed" and "has no configuration 3d_fullres" in out.message
    record = read_failure(campaign, prep)
    assert record["task"] == prep.id and record["message"] == out.message
    assert record["log"] == str(campaign.log_path(prep)) and record["time"]
    train = campaign.trains_of(prep)[0]
    out = TaskExecution(campaign, train.id).run()
    assert out.status == "blocked" and out.message == f"its prepare step failed; log: {campaign.log_path(prep)}"
    assert not train.fold_dir.exists() and read_failure(campaign, train) is None
    assert describe_task(campaign, train, "cpu").state == "blocked"
    assert describe_task(campaign, prep, "cpu").state == "failed"
    # later every fold is done (e.g. trained elsewhere): the prepare has nothing to do; its record goes
    for t in campaign.trains_of(prep):
        finish_fold(t.fold_dir)
    assert TaskExecution(campaign, prep.id).run().status == "skipped"
    assert read_failure(campaign, prep) is None


def test_done_fold_is_skipped_and_its_old_failure_record_removed(campaign):
    task = campaign.train_tasks[0]
    finish_fold(task.fold_dir)
    path = campaign.failure_path(task)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"task": task.id, "message": "an earlier failure"}))
    final = task.fold_dir / "checkpoint_final.pth"
    before = (final.stat().st_mtime_ns, final.read_bytes())
    execution = TaskExecution(campaign, task.id)
    assert execution.interrupt(timeout=1) is False  # nothing runs
    out = execution.run()
    assert out.status == "skipped" and "already done" in out.message
    assert not path.exists()
    assert (final.stat().st_mtime_ns, final.read_bytes()) == before


def test_dry_run_changes_nothing_and_says_what_would_run(campaign, tmp_path, capsys):
    prepared_plans(tmp_path)
    done = campaign.task(f"{ALPHA}/3d_fullres/finetune/fold_0")
    finish_fold(done.fold_dir)
    cont = campaign.task(f"{ALPHA}/3d_fullres/baseline/fold_0")
    cont.fold_dir.mkdir(parents=True)
    torch.save({}, cont.fold_dir / "checkpoint_latest.pth")
    broken = campaign.task(f"{ALPHA}/3d_fullres/finetune/fold_1")
    broken.fold_dir.mkdir(parents=True)
    (broken.fold_dir / "checkpoint_latest.pth").write_bytes(b"PK\x03\x04 cut short")
    before = tree_snapshot(tmp_path)
    lines = []
    assert run_campaign(campaign, dry_run=True, echo=lines.append) == 0
    assert tree_snapshot(tmp_path) == before  # not even the workdir, a lock or a log
    assert not campaign.workdir.exists()
    text = "\n".join(lines)
    rows = {ln.split()[0]: ln for ln in lines if ln.startswith("Dataset")}
    assert rows[done.id].split()[1] == "done"
    assert rows[cont.id].split()[1:3] == ["to", "continue"]
    assert "moved aside before it runs" in rows[broken.id]
    assert f"{cont.id}: " in text and " --c -device cpu" in text
    assert f"{ALPHA}/3d_fullres/finetune/fold_1: " in text and "-pretrained_weights" in text
    assert "nnUNetv2_plan_and_preprocess -d 912 -c 3d_fullres --verify_dataset_integrity" in text  # Beta: no plans
    assert "nnUNetv2_preprocess -d 911 -plans_name nnUNetPlans -c 3d_fullres" in text  # Alpha: plans, no data
    assert f"nnunet-transfer check {campaign.pretrained} -d 911 -c 3d_fullres -p nnUNetPlans" in text
    assert lines[-1] == "dry run: nothing changed"


def test_status_table(campaign, hold):
    finish_fold(campaign.train_tasks[0].fold_dir)
    proc = hold(campaign.train_tasks[1])
    views = campaign_status(campaign)
    lines = format_status(views)
    assert lines[0].split() == ["task", "state", "detail"]
    states = {v.task.id: v.state for v in views}
    assert states[campaign.train_tasks[0].id] == "done"
    assert states[campaign.train_tasks[1].id] == "running"
    assert states[campaign.prepare_tasks[0].id] == "to plan"
    assert f"pid {proc.pid}" in next(ln for ln in lines if ln.startswith(campaign.train_tasks[1].id))
    assert lines[-1].startswith("8 tasks: ") and "1 done" in lines[-1] and "1 running" in lines[-1]


@pytest.mark.parametrize("gpus", [None, [0, 1]])
def test_local_runner_progress_and_exit_status(campaign, tmp_path, gpus):
    if gpus:
        write_campaign(tmp_path / "c.yaml", campaign_dict(executor={"kind": "local", "gpus": gpus}))
        campaign = load_campaign(tmp_path / "c.yaml")
    # Alpha's prepare fails (no such configuration in its plans): its folds are blocked; Beta goes on
    prepared_plans(tmp_path, configurations=("2d",))
    for t in campaign.train_tasks:
        if t.dataset == BETA:
            finish_fold(t.fold_dir)
    lines = []
    assert run_campaign(campaign, echo=lines.append) == 1
    assert lines[0].startswith("campaign unit: 8 tasks (2 prepare, 6 train) on this machine")
    ends = [ln for ln in lines if ln.startswith("[")]
    assert len(ends) == 8  # one end line per task; no start line: the prepare failed before running a command
    failed = [ln for ln in ends if f"{ALPHA} nnUNetPlans prepare: failed after " in ln]
    assert len(failed) == 1 and "has no configuration 3d_fullres" in failed[0] and "(log: " in failed[0]
    assert sum("blocked (its prepare step failed; log: " in ln for ln in ends) == 4
    assert sum(": skipped (" in ln for ln in ends) == 3  # Beta's prepare and folds: already done
    if gpus is None:  # one after the other, in file order
        assert ends[0] == failed[0] and "(left: 7 tasks)" in ends[0]
        assert all(ln.startswith(f"[{i}/8] ") for i, ln in enumerate(ends, 1))
    assert lines[-2].startswith("campaign unit: 8 tasks in ") and "3 done (3 already), 1 failed, 4 blocked" in lines[-2]
    assert "failure records: " in lines[-1]
    # fixed (the folds got done): the next run finds everything done and removes the record
    finish_all(campaign)
    lines = []
    assert run_campaign(campaign, echo=lines.append) == 0
    assert "8 done (8 already)" in lines[-1]
    assert read_failure(campaign, campaign.prepare_tasks[0]) is None


def test_busy_tasks_make_the_run_exit_75(campaign, hold, tmp_path):
    finish_all(campaign)
    prepared_data(tmp_path)  # the prepare step finds the data complete; no fine-tuning left: no check to run
    busy = campaign.task(f"{ALPHA}/3d_fullres/baseline/fold_0")
    (busy.fold_dir / "validation" / "summary.json").unlink()  # not done: the run would validate it, if free
    hold(busy)
    lines = []
    assert run_campaign(campaign, echo=lines.append) == PREEMPTED_EXIT_CODE
    assert any(f"{busy.label}: skipped (busy: another run works on it" in ln for ln in lines)
    assert any(f"{ALPHA} nnUNetPlans prepare: done in 0:00 (data complete)" in ln for ln in lines)
    assert "7 done (6 already), 1 busy" in lines[-2]
    assert lines[-1].startswith("not finished: tasks left to another run")


def test_report_command_writes_the_report_and_says_what_is_not_done(campaign, tmp_path, capsys):
    from nnunet_transfer.cli import main

    for i, t in enumerate(campaign.train_tasks[:4]):  # Alpha's folds
        finish_fold(t.fold_dir, dice=0.5 + i / 10)
    out = tmp_path / "elsewhere"
    assert main(["campaign", "report", str(campaign.path), "-o", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert {ln for ln in printed if ln.startswith("wrote ")} == {f"wrote {out / n}" for n in
                                                                  ("report.csv", "report.md", "report.png")}
    assert "not done (2 of 6 folds, not in the report):" in printed
    assert f"  {BETA}/3d_fullres/finetune/fold_0: not started (no fold folder)" in printed
    assert printed[-1].startswith("report: 4 folds reported, 2 not done")
    rows = (out / "report.csv").read_text().splitlines()
    assert rows[0].startswith("dataset,configuration,arm,fold,label,dice")
    assert sum(ln.startswith(f"{ALPHA},3d_fullres,baseline,1,") for ln in rows) == 2  # label 1, foreground mean
    assert not campaign.workdir.exists()  # -o: nothing written elsewhere
