"""SLURM against a real scheduler started by the tests (tests/slurm_cluster.py): submitit itself, then a campaign.

The module's cluster fixture skips every test here, with the reason, where the cluster cannot start (not root, the
Debian packages missing: ``.ci/run`` installs them).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
import yaml
from helpers import bin_path, nnunet_env
from slurm_cluster import ClusterUnavailable, SlurmCluster

# the job functions below travel by value: the jobs do not import this test module
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def slurm() -> SlurmCluster:
    """A running single-node SLURM; ``SLURM_CONF`` set in this process (submitit calls sbatch, sacct, scancel)."""
    try:
        cluster = SlurmCluster.start()
    except ClusterUnavailable as exc:
        install = os.environ.get("NNUNET_TRANSFER_SLURM_INSTALL", "")
        pytest.skip(f"no test SLURM cluster: {exc}" + (f" (.ci/run: {install})" if install else ""))
    patch = pytest.MonkeyPatch()
    patch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    try:
        yield cluster
    finally:
        patch.undo()
        cluster.stop()


def _executor(folder: Path, **params) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder, cluster="slurm")
    # timeout_min >= 60: below about 50 submitit counts every interrupt as a time limit (max_num_timeout)
    ex.update_parameters(timeout_min=60, cpus_per_task=1, **params)
    return ex


def _square(x: int) -> tuple[int, str, str]:
    return x * x, os.environ["SLURM_JOB_ID"], os.environ.get("SLURM_ARRAY_TASK_ID", "")


def _square_slowly(x: int) -> tuple[int, str, str]:
    time.sleep(2)
    return _square(x)


def _sacct(job_id: str, fields: str = "JobID,State,Start,End") -> list[dict[str, str]]:
    out = subprocess.run(["sacct", "-X", "-P", "-D", "-o", fields, "-j", job_id], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    names = out[0].split("|")
    return [dict(zip(names, line.split("|"), strict=True)) for line in out[1:]]


def _states(job_id: str, expected: list[str], timeout: float = 30) -> list[dict[str, str]]:
    """sacct's rows of a job once their states are ``expected`` (the accounting database follows by a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = _sacct(job_id)
        if [row["State"] for row in rows] == expected:
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.5)


def test_cluster_runs_a_function_job(slurm, tmp_path):
    job = _executor(tmp_path).submit(_square, 7)
    value, job_id, _ = job.result()
    assert value == 49
    assert job_id == job.job_id
    _states(job.job_id, ["COMPLETED"])


def test_cluster_runs_an_array(slurm, tmp_path):
    jobs = _executor(tmp_path, slurm_array_parallelism=2).map_array(_square_slowly, [1, 2, 3])
    results = [j.result() for j in jobs]
    assert [r[0] for r in results] == [1, 4, 9]
    array_id = jobs[0].job_id.split("_")[0]
    assert [j.job_id for j in jobs] == [f"{array_id}_{i}" for i in range(3)]
    assert sorted(r[2] for r in results) == ["0", "1", "2"]
    rows = _states(array_id, ["COMPLETED"] * 3)
    assert sorted(row["JobID"] for row in rows) == [f"{array_id}_{i}" for i in range(3)]
    # two CPUs, one each (DefMemPerCPU: not all of the memory each): two tasks ran at the same time
    rows.sort(key=lambda row: row["Start"])
    assert rows[1]["Start"] < rows[0]["End"], rows


def _write_after(path: str, delay: float) -> float:
    time.sleep(delay)
    Path(path).write_text("first")
    return time.time()


def _read(path: str) -> tuple[str, float]:
    return Path(path).read_text(), time.time()


def test_cluster_honours_a_dependency(slurm, tmp_path):
    marker = tmp_path / "marker"
    first = _executor(tmp_path).submit(_write_after, str(marker), 3.0)
    ex = _executor(tmp_path, slurm_additional_parameters={"dependency": f"afterok:{first.job_id}"})
    second = ex.submit(_read, str(marker))
    text, started = second.result()
    assert text == "first"
    assert started >= first.result()
    # a dependency on a failed job never runs: SLURM keeps it pending (DependencyNeverSatisfied) or cancels it
    failing = _executor(tmp_path).submit(_read, str(tmp_path / "missing"))
    blocked = _executor(tmp_path, slurm_additional_parameters={"dependency": f"afterok:{failing.job_id}"}).submit(
        _square, 2)
    with pytest.raises(submitit.core.utils.FailedJobError):
        failing.result()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        reason = subprocess.run(["squeue", "-h", "-j", blocked.job_id, "-o", "%r"], capture_output=True,
                                text=True).stdout.strip()
        if reason == "DependencyNeverSatisfied":
            break
        time.sleep(0.5)
    assert reason == "DependencyNeverSatisfied"
    blocked.cancel(check=True)


CHILD = """\
import os, signal, sys, time
log, seconds = sys.argv[1], float(sys.argv[2])
def note(line):
    with open(log, "a") as fh:
        fh.write(line + "\\n")
def handler(signum, frame):
    note(f"child got {signal.Signals(signum).name}")
    if signum == signal.SIGUSR1:  # like the AdaptiveFT trainers: finish the step, save, exit 75
        time.sleep(0.5)
        note("child saved")
        sys.exit(75)
for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(s, handler)
note(f"child started {os.getpid()}")
end = time.time() + seconds
while time.time() < end:
    time.sleep(0.05)
"""


class _Resumable(submitit.helpers.Checkpointable):
    """A job that runs a child process (like a task runs nnUNetv2_train) and on preemption asks it to save."""

    def __init__(self, log: str, script: str) -> None:
        self.log, self.script, self.runs = log, script, 0
        self.proc: subprocess.Popen | None = None

    def _note(self, line: str) -> None:
        with open(self.log, "a") as fh:
            fh.write(line + "\n")

    def __call__(self) -> tuple[int, int]:
        import threading

        self.runs += 1
        self._note(f"job run {self.runs} restart={os.environ.get('SLURM_RESTART_COUNT', '0')}")
        result: dict[str, int] = {}

        def child() -> None:
            self.proc = subprocess.Popen([sys.executable, self.script, self.log, "60" if self.runs == 1 else "1"])
            result["rc"] = self.proc.wait()

        # the child is waited for in a thread: the signal handler below runs in the main thread and must be able
        # to see the child exit (Popen.wait holds a lock the interrupted main thread would never release)
        worker = threading.Thread(target=child, daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(1.0)
        return self.runs, result["rc"]

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        proc = self.proc
        self._note(f"job checkpoint, child running={proc is not None and proc.poll() is None}")
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGUSR1)
            self._note(f"job child exited {proc.wait(30)}")
        self.proc = None
        return super().checkpoint(*args, **kwargs)


def test_checkpointable_job_is_requeued_after_preemption(slurm, tmp_path):
    """``job._interrupt()``: ``scancel --signal TERM`` then ``--signal USR2`` to the job's step. Every process of the
    step gets both, the job's own Python process and the child it started (proctrack/linuxproc, as cgroups on a real
    cluster); submitit ignores the TERM and on USR2 calls ``checkpoint()``, then ``scontrol requeue``."""
    log = tmp_path / "signals.log"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    job = _executor(tmp_path).submit(_Resumable(str(log), str(script)))
    deadline = time.monotonic() + 60
    while "child started" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, f"the job did not start:\n{slurm.squeue()}"
        time.sleep(0.2)
    job._interrupt()  # a preemption, as SLURM would deliver it
    runs, rc = job.result()
    lines = log.read_text().splitlines()
    assert (runs, rc) == (2, 0), lines
    assert lines[0] == "job run 1 restart=0"
    first_run = lines[: lines.index("job run 2 restart=1")]
    # the child got SLURM's signals directly, and the job's checkpoint asked it to save and waited for it
    assert {"child got SIGTERM", "child got SIGUSR2"} <= set(first_run), lines
    assert "job checkpoint, child running=True" in first_run
    assert first_run[-2:] == ["child saved", "job child exited 75"], lines
    _states(job.job_id, ["REQUEUED", "COMPLETED"])


# --- a campaign on SLURM ------------------------------------------------------------------------------------------
EPOCHS = 4
RECIPE = {"name": "slurm_tiny", "num_epochs": EPOCHS, "iterations_per_epoch": 3, "val_iterations_per_epoch": 1}
TARGET = "Dataset904_SlurmTgt"
TRAINER = "nnUNetTrainerAdaptiveFT"


class _Output:
    """A subprocess's output lines as they come (read by a thread)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)


def _epochs(log: Path) -> list[int]:
    """The epochs a training log of nnU-Net shows (``Epoch N`` at the start of each)."""
    return [int(m) for m in re.findall(r": Epoch (\d+)\s*$", log.read_text(), flags=re.M)]


def _wait(predicate, timeout: float, what: str, output: _Output, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen (campaign run exit {proc.poll()}):\n{output.text()}")
        time.sleep(0.2)


def _campaign(tmp_path: Path, pretrained: Path, targets: list[dict], name: str, find_best: dict | None = None,
              **executor) -> Path:
    recipe = tmp_path / "slurm_tiny.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    (tmp_path / "preprocessed").mkdir(exist_ok=True)
    (tmp_path / "results").mkdir(exist_ok=True)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name,
        "pretrained": str(pretrained),
        "trainer": TRAINER,
        "recipe": recipe.name,
        "plans": "own",
        "configurations": ["3d_fullres"],
        "folds": [0, 1],
        "targets": targets,
        # timeout_min >= 60: below about 50, submitit counts every preemption as a time limit
        "executor": {"kind": "slurm", "timeout_min": 60, "cpus_per_task": 1, "mem_gb": 4,
                     "slurm_array_parallelism": 2, **executor},
        "device": "cpu",
        **({"find_best": find_best} if find_best is not None else {}),
    }, sort_keys=False))
    return path


def _start(campaign: Path, env: dict[str, str]) -> tuple[subprocess.Popen, _Output]:
    # Ctrl-C as at a terminal: a suite started in the background (`cmd &` in a script) inherits SIGINT ignored, and
    # Python then never raises KeyboardInterrupt; give the command the default disposition a terminal gives it
    proc = subprocess.Popen([bin_path("nnunet-transfer"), "campaign", "run", str(campaign)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return proc, _Output(proc)


def _submitted(lines: list[str]) -> dict[str, str]:
    """label -> SLURM job id, from the ``submitted as`` / ``already in the queue as`` lines."""
    found = {}
    for line in lines:
        if m := re.search(r"\] (.+): (?:submitted as|already in the queue as) SLURM job (\S+)", line):
            found[m.group(1)] = m.group(2)
    return found


def test_campaign_on_slurm_continues_a_preempted_fold(slurm, workspace, tmp_path):
    """``nnunet-transfer campaign run`` with ``executor: {kind: slurm}``: a prepare job, then an array of 2 folds
    after it, then the find-best job after the folds (``afterok``). Ctrl-C stops waiting (the jobs keep running); a
    second ``campaign run`` waits for the same jobs instead of submitting them again. Both folds are preempted in
    their second epoch: the training saves at the end of the epoch and exits, the job is requeued and the fold
    continues from the next epoch (not from 0). The find-best job starts only once both folds are done."""
    from nnunet_transfer.demo.synthetic import make_dataset

    make_dataset(tmp_path / "raw", 904, "SlurmTgt", num_cases=5, shape=(32, 32, 32), spacing=(1, 1, 1), seed=7)
    campaign = _campaign(tmp_path, workspace.checkpoint, [{"dataset": 904}], "on-slurm", find_best={})
    env = nnunet_env(tmp_path, SLURM_CONF=slurm.env["SLURM_CONF"])
    logs = [tmp_path / "on-slurm.campaign" / "logs" / f"{TARGET}.3d_fullres.finetune.fold_{f}.log" for f in (0, 1)]
    labels = [f"{TARGET} nnUNetPlans prepare", f"{TARGET} 3d_fullres finetune fold 0",
              f"{TARGET} 3d_fullres finetune fold 1", f"{TARGET} nnUNetPlans find-best"]

    # the first run submits, then Ctrl-C: it stops waiting, the jobs keep running
    proc, output = _start(campaign, env)
    try:
        jobs = _wait(lambda: len(_submitted(output.lines)) == 4 and _submitted(output.lines), 60, "4 submissions", output, proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 75, output.text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sorted(jobs) == sorted(labels), jobs
    prepare_job, fold0_job, fold1_job, best_job = (jobs[label] for label in labels)
    assert fold0_job.split("_")[0] == fold1_job.split("_")[0] != prepare_job, "the folds are one array job"
    assert f"find-best: submitted as SLURM job {best_job} after its train job {fold0_job.split('_')[0]}" in \
        output.text(), output.text()
    assert "stopped waiting; 4 tasks keep running on SLURM" in output.text(), output.text()
    assert f"campaign status {campaign}" in output.text()

    # the second run finds them in the queue and waits for them
    proc, output = _start(campaign, env)
    try:
        again = _wait(lambda: len(_submitted(output.lines)) == 4 and _submitted(output.lines), 60, "4 jobs found", output, proc)
        assert again == jobs, output.text()
        assert sum("already in the queue as SLURM job" in line for line in output.lines) == 4, output.text()
        # preempt both folds while they train their second epoch (their logs show epoch 1): fold 0 as submitit's
        # job._interrupt() does (SIGTERM, then USR2: the job's checkpoint() stops the training and requeues);
        # fold 1 with SIGTERM only, as a preemption that does not go through submitit (the training stops on it,
        # the job requeues itself)
        for log, job, signals in ((logs[0], fold0_job, ("SIGTERM", "USR2")), (logs[1], fold1_job, ("SIGTERM",))):
            _wait(lambda log=log: log.is_file() and re.search(r": Epoch 1\s*$", log.read_text(), flags=re.M),
                  240, f"{log.name}: epoch 1", output, proc)
            for sig in signals:
                subprocess.run(["scancel", job, "--signal", sig], env=env, check=True)
        code = proc.wait(timeout=600)  # two folds, each preempted and continued, then find-best
    finally:
        if proc.poll() is None:
            proc.kill()
    text = output.text()
    assert code == 0, text
    # each fold's lines, in order: found, running, preempted, requeued (with its checkpoint), running again, done
    expected = {
        0: ["already in the queue as SLURM job", "running (SLURM job", "preempted or at its time limit",
            "requeued (SLURM job", "running again (run 2, requeued)", "done in"],
        1: ["already in the queue as SLURM job", "running (SLURM job", "preempted (SLURM job", "requeued (SLURM job",
            "running again (run 2, requeued)", "done in"]}
    for fold, steps in expected.items():
        events = [line.split(f"finetune fold {fold}: ", 1)[1] for line in text.splitlines()
                  if f"finetune fold {fold}: " in line]
        assert [next((e for e in steps if line.startswith(e)), line) for line in events] == steps, events
        assert "the checkpoint it just wrote" in events[3], events
    assert re.search(r"prepare: done", text) and len(re.findall(r"finetune fold \d: done in", text)) == 2, text
    assert re.search(rf"find-best: done in \S+ \(best configuration in \S+inference_information.json\) \(SLURM "
                     rf"job {best_job}\)", text), text
    assert re.search(r"campaign on-slurm: 4 tasks in \S+ on SLURM: 4 done$", text.splitlines()[-1]), text
    # nnU-Net's find-best ran once, after both folds had ended (their last runs), as SLURM saw it
    assert (tmp_path / "results" / TARGET / "inference_information.json").is_file()
    best_row = _states(best_job, ["COMPLETED"])[0]
    fold_ends = [_sacct(job)[-1]["End"] for job in (fold0_job, fold1_job)]
    assert best_row["Start"] >= max(fold_ends), (best_row, fold_ends)
    best_log = tmp_path / "on-slurm.campaign" / "logs" / f"{TARGET}.nnUNetPlans.find_best.log"
    commands = [line for line in best_log.read_text().splitlines() if line.startswith("$ ")]
    assert len(commands) == 1 and "nnUNetv2_find_best_configuration 904 -c 3d_fullres" in commands[0], commands

    results = tmp_path / "results" / TARGET / f"{TRAINER}__nnUNetPlans__3d_fullres"
    for fold, job in ((0, fold0_job), (1, fold1_job)):
        fold_dir = results / f"fold_{fold}"
        assert (fold_dir / "checkpoint_final.pth").is_file()
        assert (fold_dir / "validation" / "summary.json").is_file()
        # two runs; the second began where the first stopped (continued, not restarted), every epoch once
        runs = [_epochs(log) for log in sorted(fold_dir.glob("training_log_*.txt"))]
        assert len(runs) == 2, runs
        first, second = runs
        assert first[0] == 0 and second[0] == first[-1] + 1 > 0, runs
        assert first + second == list(range(EPOCHS)), runs
        # the job ran twice (requeued); the second run of the task was nnUNetv2_train --c
        assert [row["State"] for row in _sacct(job)] == ["REQUEUED", "COMPLETED"]
        commands = [line for line in logs[fold].read_text().splitlines() if line.startswith("$ ")]
        assert len(commands) == 2 and "--c" not in commands[0], commands
        assert commands[1].split()[-3:] == ["--c", "-device", "cpu"], commands


def test_campaign_on_slurm_a_failed_prepare_blocks_its_folds(slurm, tmp_path):
    """A target whose raw data is broken: its prepare job fails, its folds' array job and the find-best job after
    them are cancelled (never run), they are reported blocked, and the exit status says it (1)."""
    from nnunet_transfer.demo.synthetic import make_dataset

    raw = make_dataset(tmp_path / "raw", 905, "Broken", num_cases=5, shape=(16, 16, 16), seed=8)
    missing = sorted((raw / "labelsTr").iterdir())[0]
    missing.unlink()
    pretrained = tmp_path / "pretrained.pth"
    pretrained.write_bytes(b"not read: the prepare step fails first")
    campaign = _campaign(tmp_path, pretrained, [{"dataset": 905}], "broken", find_best={})
    env = nnunet_env(tmp_path, SLURM_CONF=slurm.env["SLURM_CONF"])
    proc = subprocess.run([bin_path("nnunet-transfer"), "campaign", "run", str(campaign)], env=env,
                          capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    assert re.search(r"Dataset905_Broken nnUNetPlans prepare: failed after \S+: nnUNetv2_plan_and_preprocess exited "
                     r"with status \d+: .+\(log: \S+prepare\.log\)", text), text
    blocked = re.findall(r"finetune fold (\d): blocked \(its prepare step failed", text)
    assert sorted(blocked) == ["0", "1"], text
    assert re.search(r"Dataset905_Broken nnUNetPlans find-best: blocked \(its train step blocked: its prepare step "
                     r"failed", text), text
    assert "1 failed, 3 blocked" in text, text
    jobs = _submitted(text.splitlines())
    # SLURM saw the prepare job fail; the folds and the find-best never ran: cancelled while they waited
    _states(jobs["Dataset905_Broken nnUNetPlans prepare"], ["FAILED"])
    array = jobs["Dataset905_Broken 3d_fullres finetune fold 0"].split("_")[0]
    best = jobs["Dataset905_Broken nnUNetPlans find-best"]
    assert f"find-best: submitted as SLURM job {best} after its train job {array}" in text, text
    for job in (array, best):
        deadline = time.monotonic() + 30
        rows = _sacct(job)
        while not all(row["State"].startswith("CANCELLED") for row in rows):
            assert time.monotonic() < deadline, rows
            time.sleep(0.5)
            rows = _sacct(job)
    # the folds never ran: no task log, no run of a task in the array's output
    assert not list((tmp_path / "broken.campaign" / "logs").glob("*fold_*"))
    outputs = [p.read_text() for p in (tmp_path / "broken.campaign" / "slurm").glob(f"{array}_*_log.out")]
    assert not any(": SLURM job" in text for text in outputs), outputs
    assert not (tmp_path / "results" / "Dataset905_Broken").exists()


def test_campaign_on_slurm_a_request_no_node_can_meet(slurm, tmp_path):
    """More CPUs than any node has: sbatch refuses at once (EnforcePartLimits=ALL), and the run says why (exit 2)
    instead of waiting on a job that would stay pending forever."""
    from nnunet_transfer.demo.synthetic import make_dataset

    make_dataset(tmp_path / "raw", 906, "Big", num_cases=5, shape=(16, 16, 16), seed=9)
    pretrained = tmp_path / "pretrained.pth"
    pretrained.write_bytes(b"not read: nothing runs")
    campaign = _campaign(tmp_path, pretrained, [{"dataset": 906}], "big", cpus_per_task=slurm.cpus * 8)
    env = nnunet_env(tmp_path, SLURM_CONF=slurm.env["SLURM_CONF"])
    proc = subprocess.run([bin_path("nnunet-transfer"), "campaign", "run", str(campaign)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert re.search(rf"nnunet-transfer campaign: error: {re.escape(str(campaign))}: sbatch refused the job "
                     r"big:Dataset906_Big:prepare: sbatch: error: Batch job submission failed: .+", proc.stderr), \
        proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip() == ""


def test_campaign_status_on_slurm_shows_each_queued_task_with_its_job_and_state(slurm, tmp_path):
    """Jobs held in the queue (``--begin`` an hour from now): ``campaign status`` shows each task's SLURM job id and
    state (the prepare job, the array of folds after it)."""
    from nnunet_transfer.demo.synthetic import make_dataset

    make_dataset(tmp_path / "raw", 907, "Queued", num_cases=5, shape=(16, 16, 16), seed=7)
    pretrained = tmp_path / "pretrained.pth"
    pretrained.write_bytes(b"not read: nothing runs")
    campaign = _campaign(tmp_path, pretrained, [{"dataset": 907}], "queued",
                         slurm_additional_parameters={"begin": "now+1hour"})
    env = nnunet_env(tmp_path, SLURM_CONF=slurm.env["SLURM_CONF"])
    proc = subprocess.Popen([bin_path("nnunet-transfer"), "campaign", "run", str(campaign)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(subprocess.run(["squeue", "-h", "-r"], env=env, capture_output=True, text=True).stdout.split()) < 3:
            assert time.monotonic() < deadline, "the jobs were not submitted"
            time.sleep(0.5)
        status = subprocess.run([bin_path("nnunet-transfer"), "campaign", "status", str(campaign)], env=env,
                                capture_output=True, text=True, timeout=120)
        assert status.returncode == 0, status.stderr
        text = status.stdout
        prepare = re.search(r"^Dataset907_Queued/nnUNetPlans/prepare\s+queued\s+SLURM job (\d+) PENDING;", text, re.M)
        assert prepare, text
        for fold in (0, 1):
            assert re.search(rf"^Dataset907_Queued/3d_fullres/finetune/fold_{fold}\s+queued\s+SLURM job \d+_{fold} "
                             r"PENDING;", text, re.M), text
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        ids = subprocess.run(["squeue", "-h", "-o", "%A"], env=env, capture_output=True, text=True).stdout.split()
        if ids:  # this module's own cluster: only the jobs of this test are in it
            subprocess.run(["scancel", *ids], env=env, check=False)
