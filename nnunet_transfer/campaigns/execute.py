"""One task of a campaign, as every executor runs it (local, one thread per GPU, a SLURM job).

:class:`TaskExecution` takes the task's lock, reads what is done from nnU-Net's files, runs the stock commands
(``nnUNetv2_plan_and_preprocess`` / ``nnunet-transfer plans``, ``nnUNetv2_preprocess``, ``nnunet-transfer check``,
``nnUNetv2_train``, ``nnUNetv2_find_best_configuration``) through the console scripts of this Python environment,
appends their output to ``<workdir>/logs/<task>.log`` and keeps a failure record ``<workdir>/failures/<task>.json``
while the task fails.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nnunet_transfer.campaigns.locks import LockInfo, TaskLock, lock_holder
from nnunet_transfer.campaigns.spec import OWN_PLANS, Campaign
from nnunet_transfer.campaigns.state import (
    PrepareState,
    TrainState,
    move_aside,
    prepare_state,
    train_done,
    train_state,
)
from nnunet_transfer.campaigns.tasks import FindBestTask, PrepareTask, TrainTask
from nnunet_transfer.core.commands import console_script
from nnunet_transfer.core.io import write_json_atomic
from nnunet_transfer.core.preemption import PREEMPTED_EXIT_CODE
from nnunet_transfer.core.schedules.recipes import RECIPE_ENV_VAR
from nnunet_transfer.demo.progress import format_elapsed

__all__ = [
    "Outcome",
    "TaskExecution",
    "TaskView",
    "describe_task",
    "find_best_command",
    "find_best_done",
    "read_failure",
    "resolve_device",
    "run_summary",
    "train_command",
]

Status = Literal["done", "skipped", "failed", "preempted", "busy", "blocked"]
Task = PrepareTask | TrainTask | FindBestTask


@dataclass
class Outcome:
    """What :meth:`TaskExecution.run` did: ``status`` and one line saying what happened."""

    task_id: str
    status: Status
    message: str
    log: Path | None
    elapsed: float

    def describe(self) -> str:
        """The end of a task's progress line: ``done in 1:23``, ``failed after 0:41: ... (log: ...)``..."""
        took = format_elapsed(self.elapsed)
        return {
            "done": f"done in {took}" + (f" ({self.message})" if self.message else ""),
            "skipped": f"skipped ({self.message})",
            "busy": f"skipped (busy: {self.message})",
            "blocked": f"blocked ({self.message})",
            "failed": f"failed after {took}: {self.message} (log: {self.log})",
            "preempted": f"preempted after {took}: {self.message}",
        }[self.status]


def run_summary(campaign: Campaign, counts: Mapping[str, int], total: int, elapsed: float, echo: Callable[[str], None],
                *, already: int = 0, not_run: int = 0, where: str = "", left_why: str = "stopped") -> int:
    """The end of a campaign run, for every executor: one summary line (``counts``: outcomes by status; ``already``:
    tasks done before this run that it did not execute; ``not_run``: tasks it never started), what to do next, and
    the exit status (0 all done, 1 something failed or is blocked, 75 tasks left to run again)."""
    skipped = already + counts.get("skipped", 0)
    parts = [f"{counts.get('done', 0) + skipped} done" + (f" ({skipped} already)" if skipped else "")]
    parts += [f"{counts[s]} {s}" for s in ("failed", "blocked", "busy", "preempted") if counts.get(s)]
    if not_run:
        parts.append(f"{not_run} not started")
    echo(f"campaign {campaign.name}: {total} tasks in {format_elapsed(elapsed)}{where}: " + ", ".join(parts))
    if counts.get("failed") or counts.get("blocked"):
        echo(f"failure records: {campaign.workdir / 'failures'} (see `nnunet-transfer campaign status "
             f"{campaign.path}`); run again to retry")
        return 1
    if counts.get("busy") or counts.get("preempted") or not_run:
        echo(f"not finished: tasks left to another run or {left_why}; run again to continue")
        return PREEMPTED_EXIT_CODE
    return 0


@functools.cache
def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(campaign: Campaign) -> str:
    """``-device`` of the training commands: the campaign's ``device``; ``auto`` is cuda when the executor names
    GPUs or torch sees one, else cpu."""
    device = campaign.spec.device
    if device != "auto":
        return device
    if getattr(campaign.spec.executor, "gpus", None):
        return "cuda"
    return "cuda" if _cuda_available() else "cpu"


def train_command(campaign: Campaign, task: TrainTask, state: TrainState, device: str) -> list[str]:
    """The stock ``nnUNetv2_train`` command for the fold in this state. A new fine-tuning gets
    ``-pretrained_weights``; ``--c`` and ``--val`` never do (nnU-Net refuses both at once)."""
    cmd = [console_script("nnUNetv2_train"), str(task.dataset_id), task.configuration, str(task.fold),
           "-tr", task.trainer, "-p", task.plans]
    if state.kind == "new" and task.arm == "finetune":
        cmd += ["-pretrained_weights", str(campaign.pretrained)]
    if state.flag:
        cmd.append(state.flag)
    if campaign.needs_npz(task):
        cmd.append("--npz")  # the find-best step ensembles the validation probabilities
    return [*cmd, "-device", device]


def find_best_command(task: FindBestTask, env: Mapping[str, str]) -> list[str]:
    """The stock ``nnUNetv2_find_best_configuration`` over the target's trained folds."""
    cmd = [console_script("nnUNetv2_find_best_configuration"), str(task.dataset_id), "-c", *task.configurations,
           "-tr", *task.trainers, "-p", task.plans, "-f", *map(str, task.folds)]
    if not task.ensembling:
        cmd.append("--disable_ensembling")
    n = _num_processes(env)
    return [*cmd, "-np", n] if n else cmd


def find_best_done(campaign: Campaign, task: FindBestTask) -> bool:
    """nnU-Net's ``inference_information.json`` is there and newer than every fold it was computed from."""
    if not task.result.is_file():
        return False
    folds = [t.fold_dir / "checkpoint_final.pth" for t in campaign.train_tasks if t.id in task.train_ids]
    newest = max((f.stat().st_mtime for f in folds if f.is_file()), default=0.0)
    return task.result.stat().st_mtime >= newest


def _shown(cmd: Sequence[str], env: Mapping[str, str], extra: Mapping[str, str]) -> str:
    """The command as a shell line, with the variables the campaign sets for it in front."""
    names = [*extra, *([RECIPE_ENV_VAR] if env.get(RECIPE_ENV_VAR) else [])]
    return " ".join([*(f"{k}={shlex.quote(env[k])}" for k in dict.fromkeys(names) if k in env), shlex.join(cmd)])


def _num_processes(env: Mapping[str, str]) -> str | None:
    value = env.get("nnUNet_def_n_proc")
    return value if value and value.isdigit() else None


def _plan_command(campaign: Campaign, task: PrepareTask, env: Mapping[str, str]) -> list[str]:
    n = _num_processes(env)
    if task.mode == "transfer":
        return [console_script("nnunet-transfer"), "plans", "--from", str(campaign.pretrained), "-t",
                str(task.dataset_id), "-tp", task.plans, "-c", *task.configurations, *(["-np", n] if n else [])]
    return [console_script("nnUNetv2_plan_and_preprocess"), "-d", str(task.dataset_id), "-c", *task.configurations,
            "--verify_dataset_integrity", *(["-npfp", n, "-np", n] if n else []),
            *(["-overwrite_plans_name", task.plans] if task.plans != OWN_PLANS else [])]


def _preprocess_command(task: PrepareTask, configurations: Sequence[str], env: Mapping[str, str]) -> list[str]:
    n = _num_processes(env)
    return [console_script("nnUNetv2_preprocess"), "-d", str(task.dataset_id), "-plans_name", task.plans,
            "-c", *configurations, *(["-np", n] if n else [])]


def _check_command(campaign: Campaign, task: PrepareTask, configuration: str) -> list[str]:
    cmd = [console_script("nnunet-transfer"), "check", str(campaign.pretrained), "-d", str(task.dataset_id),
           "-c", configuration, "-p", task.plans, "-tr", campaign.trainers["finetune"]]
    return cmd + (["--recipe", campaign.check_recipe] if campaign.check_recipe else [])


def _to_check(campaign: Campaign, task: PrepareTask) -> list[str]:
    """Configurations whose fine-tuning still has folds to train: the compatibility check runs for these."""
    return [c for c in task.configurations
            if any(not train_done(t) for t in campaign.trains_of(task) if t.arm == "finetune" and t.configuration == c)]


def read_failure(campaign: Campaign, task: Task | str) -> dict[str, Any] | None:
    """The task's failure record, or None."""
    import json

    try:
        data = json.loads(campaign.failure_path(task).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


_ERROR_LINE = re.compile(r"^(FAIL\b|nnunet-transfer \w+: error:|[\w.]*(Error|Exception|Exit)\b.*:|RuntimeError|"
                         r"AssertionError)")


def _error_line(text: str) -> str:
    """The line of a command's output that says what went wrong: the last exception or ``FAIL`` line, else the last
    non-empty line (at most 400 characters)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    found = [ln for ln in lines if _ERROR_LINE.match(ln)]
    line = found[-1] if found else (lines[-1] if lines else "no output")
    return line if len(line) <= 400 else line[:397] + "..."


class _Failed(Exception):
    """A step of the task failed (internal: turned into a failure record)."""

    def __init__(self, message: str, command: Sequence[str] | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.command = command
        self.exit_code = exit_code


class TaskExecution:
    """Run one task of ``campaign``: lock, state from nnU-Net's files, command(s), failure record.

    ``env`` adds to the environment of the commands (``CUDA_VISIBLE_DEVICES``...); ``echo`` gets the few lines worth
    showing while the task runs (a prepare waiting for another run, a checkpoint moved aside); ``on_start`` is called
    once, before the first command starts (not for a task that is done, busy or blocked).
    """

    def __init__(self, campaign: Campaign, task_id: str, env: Mapping[str, str] | None = None,
                 echo: Callable[[str], None] | None = None, on_start: Callable[[], None] | None = None):
        self.campaign = campaign
        self.task = campaign.task(task_id)
        self.env = dict(env or {})
        self.echo = echo or (lambda line: None)
        self._on_start = on_start
        self.log = campaign.log_path(self.task)
        self._proc: subprocess.Popen[bytes] | None = None
        self._exited = threading.Event()
        self._interrupted = False
        self._notes: list[str] = []

    # --- public ---------------------------------------------------------------------------------------------------
    def run(self) -> Outcome:
        """Run the task; never raises for a task failure (returns status ``failed`` and writes the record)."""
        start = time.monotonic()
        lock = TaskLock(self.campaign.lock_path(self.task), self.task.id)
        if isinstance(self.task, PrepareTask):
            lock.acquire(on_wait=self._waiting)
        elif not lock.try_acquire():
            return self._outcome("busy", f"another run works on it: {lock.holder().describe()}", start)
        try:
            with lock:
                if isinstance(self.task, PrepareTask):
                    status, message = self._prepare(lock)
                elif isinstance(self.task, FindBestTask):
                    status, message = self._find_best(lock)
                else:
                    status, message = self._train(lock)
        except _Failed as e:
            self._record(str(e), e.command, e.exit_code)
            return self._outcome("failed", str(e), start)
        except Exception as e:  # our own I/O (log, failure folder...): still one line, never a traceback
            message = f"{type(e).__name__}: {e}"
            self._record(message, None, None)
            return self._outcome("failed", message, start)
        if status in ("done", "skipped"):
            self.campaign.failure_path(self.task).unlink(missing_ok=True)
        return self._outcome(status, "; ".join([message, *self._notes]), start)

    def interrupt(self, timeout: float | None = None) -> bool:
        """SIGUSR1 to the running ``nnUNetv2_train`` (not its group: its data loaders stop with it); waits up to
        ``timeout`` seconds (None: as long as it takes) for it to exit. True if it exited with the preempted status
        (checkpoint written). No-op (False) when no training runs. Safe in a signal handler of the main thread."""
        proc = self._proc
        if proc is None or not isinstance(self.task, TrainTask) or self._exited.is_set():
            return False
        self._interrupted = True
        try:
            os.kill(proc.pid, signal.SIGUSR1)
        except ProcessLookupError:
            return False
        self._exited.wait(timeout)
        return proc.returncode == PREEMPTED_EXIT_CODE

    # --- steps ----------------------------------------------------------------------------------------------------
    def _waiting(self, holder: LockInfo) -> None:
        self.echo(f"{self.task.label}: waiting for another run that prepares it ({holder.describe()})")

    def _outcome(self, status: Status, message: str, start: float) -> Outcome:
        log = self.log if self.log.exists() else None
        return Outcome(self.task.id, status, message, log, time.monotonic() - start)

    def _base_env(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        env["PYTHONUNBUFFERED"] = "1"  # the log shows each line when it is printed
        return env

    def _train(self, lock: TaskLock) -> tuple[Status, str]:
        task = self.task
        assert isinstance(task, TrainTask)
        state = train_state(task)
        if state.unreadable:
            moved = move_aside(state.unreadable)
            note = "moved aside unreadable " + ", ".join(f"{p.name.split('.unreadable-')[0]} -> {p.name}"
                                                          for p in moved)
            self.echo(f"{task.label}: {note} (killed while saving?)")
            self._notes.append(note)
            state = train_state(task)
        if state.kind == "done":
            return "skipped", "already done"
        prep = read_failure(self.campaign, task.prepare_id)
        if prep is not None:
            return "blocked", f"its prepare step failed; log: {prep.get('log', '?')}"
        env = self._base_env()
        recipe = self.campaign.recipes.get(task.arm)
        if recipe:
            env[RECIPE_ENV_VAR] = recipe
        else:
            env.pop(RECIPE_ENV_VAR, None)  # the trainer's own recipe, whatever the shell says
        cmd = train_command(self.campaign, task, state, resolve_device(self.campaign))
        code, output = self._command(cmd, env, lock)
        if code == 0 and train_done(task):
            what = {"new": "trained", "continue": "continued (--c)", "validate": "validated (--val)"}[state.kind]
            return "done", what
        if self._interrupted and code in (PREEMPTED_EXIT_CODE, -signal.SIGUSR1):
            why = ("stopped on request after writing checkpoint_latest.pth" if code == PREEMPTED_EXIT_CODE
                   else "killed by SIGUSR1 (the trainer does not handle it: no checkpoint written)")
            return "preempted", f"{why}; the next run continues it with --c"
        if code == PREEMPTED_EXIT_CODE:
            return "preempted", "the training stopped on a signal after writing checkpoint_latest.pth; " \
                                "the next run continues it with --c"
        if code == 0:
            raise _Failed(f"nnUNetv2_train exited 0 but {task.fold_dir} has no checkpoint_final.pth and "
                          "validation/summary.json", cmd, code)
        raise _Failed(f"nnUNetv2_train exited with status {code}: {_error_line(output)}", cmd, code)

    def _find_best(self, lock: TaskLock) -> tuple[Status, str]:
        task = self.task
        assert isinstance(task, FindBestTask)
        if find_best_done(self.campaign, task):
            return "skipped", f"already done ({task.result})"
        trains = [t for t in self.campaign.train_tasks if t.id in task.train_ids]
        left = [t.id for t in trains if not train_done(t)]
        if left:
            return "blocked", f"{len(left)} fold(s) not trained (first: {left[0]})"
        env = self._base_env()
        cmd = find_best_command(task, env)
        code, output = self._command(cmd, env, lock)
        if code != 0:
            raise _Failed(f"nnUNetv2_find_best_configuration exited with status {code}: {_error_line(output)}",
                          cmd, code)
        if not find_best_done(self.campaign, task):
            raise _Failed(f"nnUNetv2_find_best_configuration exited 0 but did not write {task.result}", cmd, code)
        return "done", f"best configuration in {task.result}"

    def _prepare(self, lock: TaskLock) -> tuple[Status, str]:
        task = self.task
        assert isinstance(task, PrepareTask)
        c = self.campaign
        if all(train_done(t) for t in c.trains_of(task)):
            return "skipped", "every fold of this target is done"
        env = self._base_env()
        env.pop(RECIPE_ENV_VAR, None)
        roots = _roots()
        did: list[str] = []
        state = prepare_state(task, roots.preprocessed, roots.raw)
        if state.plans_missing:
            cmd = _plan_command(c, task, env)
            code, output = self._command(cmd, env, lock)
            state = prepare_state(task, roots.preprocessed, roots.raw)
            # nnunet-transfer plans exits 1 when its own check fails after writing and preprocessing: the check below
            # says why
            if code != 0 and not (task.mode == "transfer" and code == 1 and not state.plans_missing):
                raise _Failed(f"{Path(cmd[0]).name} exited with status {code}: {_error_line(output)}", cmd, code)
            did.append("transferred plans" if task.mode == "transfer" else "planned and preprocessed")
            if state.plans_missing:
                raise _Failed(f"{Path(cmd[0]).name} did not write {state.plans_file}", cmd, code)
        self._need_configurations(state)
        if state.incomplete:
            todo = state.incomplete
            cmd = _preprocess_command(task, todo, env)
            code, output = self._command(cmd, env, lock)
            if code != 0:
                raise _Failed(f"nnUNetv2_preprocess exited with status {code}: {_error_line(output)}", cmd, code)
            state = prepare_state(task, roots.preprocessed, roots.raw)
            if state.incomplete:
                raise _Failed(f"preprocessing left data incomplete: {state.detail}", cmd, code)
            did.append(f"preprocessed {', '.join(todo)}")
        from nnunet_transfer.nnunet.datasets import ensure_default_splits, raw_case_identifiers

        if ensure_default_splits(roots.preprocessed / task.dataset, raw_case_identifiers(roots.raw / task.dataset)):
            did.append("wrote nnU-Net's default splits_final.json")
        checked = []
        for conf in _to_check(c, task):
            cmd = _check_command(c, task, conf)
            code, output = self._command(cmd, env, lock)
            if code == 1:
                raise _Failed(f"compatibility check of {conf} failed (the fine-tuning would stop at its load guard): "
                              f"{_error_line(output)}", cmd, code)
            if code != 0:
                raise _Failed(f"nnunet-transfer check exited with status {code}: {_error_line(output)}", cmd, code)
            checked.append(conf)
        if checked:
            did.append(f"check passed ({', '.join(checked)})")
        return "done", "; ".join(did) if did else "data complete"

    def _need_configurations(self, state: PrepareState) -> None:
        if state.absent:
            raise _Failed(f"{state.plans_file} has no configuration {', '.join(state.absent)} (nnU-Net plans only "
                          "the configurations a dataset needs, e.g. no 3d_lowres for small images): remove it from "
                          "the campaign's configurations for this target")

    # --- commands -------------------------------------------------------------------------------------------------
    def _command(self, cmd: list[str], env: dict[str, str], lock: TaskLock) -> tuple[int, str]:
        """Run ``cmd`` with its output appended to the task's log; returns the exit status and that output.

        The child stays in our process group (a kill of the group ends both) and holds the task's lock with us
        (``pass_fds``), so the lock stays held while it outlives us."""
        if self._on_start is not None:
            self._on_start()
            self._on_start = None
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as f:
            begin = f.tell()
            header = (f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {self.task.id} (campaign {self.campaign.name}, "
                      f"pid {os.getpid()} on {socket.gethostname()})\n$ {_shown(cmd, env, self.env)}\n")
            f.write(header.encode())
            f.flush()
            self._exited.clear()
            proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    pass_fds=(lock.fd,) if lock.fd is not None else ())
        self._proc = proc
        lock.note_child(proc.pid)
        threading.Thread(target=self._reap, args=(proc,), daemon=True).start()
        try:
            while not self._exited.wait(0.5):
                pass
        finally:
            if proc.returncode is None:  # we are interrupted (KeyboardInterrupt...): do not leave it running
                proc.terminate()
                self._exited.wait(60)
            self._proc = None
            lock.note_child(None)
        with open(self.log, "rb") as f:
            f.seek(begin + len(header.encode()))
            output = f.read().decode(errors="replace")
        return int(proc.returncode if proc.returncode is not None else -1), output

    def _reap(self, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        self._exited.set()

    def _record(self, message: str, command: Sequence[str] | None, exit_code: int | None) -> None:
        write_json_atomic(self.campaign.failure_path(self.task), {
            "task": self.task.id,
            "kind": self.task.kind,
            "command": shlex.join(command) if command else None,
            "exit_code": exit_code,
            "message": message,
            "log": str(self.log),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "host": socket.gethostname(),
        })


def _roots() -> Any:
    from nnunet_transfer.nnunet.datasets import NnUNetRoots

    roots = NnUNetRoots.resolve()
    roots.require("raw")
    roots.require("preprocessed")
    return roots


# --- read-only views (status, dry run) --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskView:
    """A task as ``campaign status`` and ``--dry-run`` show it: ``state``, ``detail`` and the command(s) a run would
    start now (empty when none)."""

    task: Task
    state: str
    detail: str
    commands: tuple[str, ...] = ()


def describe_task(campaign: Campaign, task: Task, device: str | None = None) -> TaskView:
    """The task's state from the files, its lock and failure record; changes nothing."""
    holder = lock_holder(campaign.lock_path(task))
    failure = read_failure(campaign, task)
    if isinstance(task, FindBestTask):
        if find_best_done(campaign, task):
            return TaskView(task, "done", str(task.result))
        if holder is not None:
            return TaskView(task, "running", holder.describe())
        cmd = (shlex.join(find_best_command(task, os.environ)),)
        if failure is not None:
            return TaskView(task, "failed", f"{failure.get('message', '?')} (log: {failure.get('log', '?')}); "
                                            "the next run retries it", cmd)
        left = [t for t in campaign.train_tasks if t.id in task.train_ids and not train_done(t)]
        if left:
            return TaskView(task, "waiting", f"for {len(left)} fold(s) to finish", cmd)
        return TaskView(task, "to run", f"over {len(task.train_ids)} folds", cmd)
    if isinstance(task, TrainTask):
        state = train_state(task)
        if state.kind == "done":
            return TaskView(task, "done", state.detail)
        if holder is not None:
            return TaskView(task, "running", holder.describe())
        prep = read_failure(campaign, task.prepare_id)
        if prep is not None:
            return TaskView(task, "blocked", f"its prepare step failed ({task.prepare_id})")
        recipe = campaign.recipes.get(task.arm)
        cmd = _shown(train_command(campaign, task, state, device or campaign.spec.device),
                     {RECIPE_ENV_VAR: recipe} if recipe else {}, {})
        if failure is not None:
            return TaskView(task, "failed", f"{failure.get('message', '?')} (log: {failure.get('log', '?')}); "
                                            "the next run retries it", (cmd,))
        label = {"new": "to train", "continue": "to continue", "validate": "to validate"}[state.kind]
        detail = state.detail + (" (moved aside before it runs)" if state.unreadable else "")
        return TaskView(task, label, detail, (cmd,))
    if all(train_done(t) for t in campaign.trains_of(task)):
        return TaskView(task, "done", "every fold of this target is done")
    if holder is not None:
        return TaskView(task, "running", holder.describe())
    roots = _roots()
    pstate = prepare_state(task, roots.preprocessed, roots.raw)
    env = {**os.environ}
    cmds = []
    if pstate.plans_missing:
        cmds.append(shlex.join(_plan_command(campaign, task, env)))
    elif pstate.incomplete:
        cmds.append(shlex.join(_preprocess_command(task, pstate.incomplete, env)))
    cmds += [shlex.join(_check_command(campaign, task, c)) for c in _to_check(campaign, task)]
    if failure is not None:
        return TaskView(task, "failed", f"{failure.get('message', '?')} (log: {failure.get('log', '?')}); "
                                        "the next run retries it", tuple(cmds))
    label = "to plan" if pstate.plans_missing else "to preprocess" if pstate.incomplete else "to check"
    return TaskView(task, label, pstate.detail, tuple(cmds))
