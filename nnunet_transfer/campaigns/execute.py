"""One task of a campaign, as every executor runs it (local, one thread per GPU, a SLURM job).

:class:`TaskExecution` takes the task's lock and lets the task do what is left (:meth:`Task.run
<nnunet_transfer.campaigns.tasks.Task.run>`: its state from nnU-Net's files, the stock commands through the console
scripts of this Python environment), appends the commands' output to ``<workdir>/logs/<task>.log`` and keeps a
failure record ``<workdir>/failures/<task>.json`` while the task fails. :func:`run_summary` ends a run of any
executor.
"""

from __future__ import annotations

import functools
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnunet_transfer.campaigns.locks import LockInfo, TaskLock, lock_holder
from nnunet_transfer.campaigns.spec import Campaign
from nnunet_transfer.campaigns.tasks import Status, Task, TaskFailure, TaskGraph, TaskView, shown_command
from nnunet_transfer.core.io import write_json_atomic
from nnunet_transfer.core.preemption import PREEMPTED_EXIT_CODE
from nnunet_transfer.core.progress import format_elapsed

__all__ = [
    "Outcome",
    "TaskExecution",
    "TaskView",
    "describe_task",
    "read_failure",
    "resolve_device",
    "run_summary",
]


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
    if campaign.spec.executor.names_gpus():
        return "cuda"
    return "cuda" if _cuda_available() else "cpu"


def read_failure(campaign: Campaign, task: Task | str) -> dict[str, Any] | None:
    """The task's failure record, or None."""
    import json

    try:
        data = json.loads(campaign.failure_path(task).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class TaskExecution:
    """Run one task of ``campaign``: lock, state from nnU-Net's files, command(s), failure record.

    It is the :class:`~nnunet_transfer.campaigns.tasks.Step` the task's own :meth:`~nnunet_transfer.campaigns.tasks.
    Task.run` works through. ``env`` adds to the environment of the commands (``CUDA_VISIBLE_DEVICES``...); ``echo``
    gets the few lines worth showing while the task runs (a prepare waiting for another run, a checkpoint moved
    aside); ``on_start`` is called once, before the first command starts (not for a task that is done, busy or
    blocked).
    """

    def __init__(self, campaign: Campaign, task_id: str, env: Mapping[str, str] | None = None,
                 echo: Callable[[str], None] | None = None, on_start: Callable[[], None] | None = None):
        self.campaign = campaign
        self.task = campaign.task(task_id)
        self.extra_env = dict(env or {})
        self.echo = echo or (lambda line: None)
        self._on_start = on_start
        self.log = campaign.log_path(self.task)
        self._lock: TaskLock | None = None
        self._fold_lock: TaskLock | None = None  # a train task's: keyed on its fold folder (every campaign's)
        self._proc: subprocess.Popen[bytes] | None = None
        self._exited = threading.Event()
        self._interrupted = False
        self._notes: list[str] = []

    # --- public ---------------------------------------------------------------------------------------------------
    def run(self) -> Outcome:
        """Run the task; never raises for a task failure (returns status ``failed`` and writes the record)."""
        start = time.monotonic()
        lock = TaskLock(self.campaign.lock_path(self.task), self.task.id)
        if self.task.waits_for_lock:
            lock.acquire(on_wait=self._waiting)
        elif not lock.try_acquire():
            return self._outcome("busy", f"another run works on it: {lock.holder().describe()}", start)
        fold_path = self.campaign.fold_lock_path(self.task)
        fold_lock = TaskLock(fold_path, self.task.id) if fold_path is not None else None
        if fold_lock is not None and not fold_lock.try_acquire():
            lock.release()
            return self._outcome("busy", f"another campaign works on its fold: {fold_lock.holder().describe()}",
                                 start)
        try:
            with lock:
                self._lock = lock
                self._fold_lock = fold_lock
                status, message = self.task.run(self)
        except TaskFailure as e:
            self._record(str(e), e.command, e.exit_code)
            return self._outcome("failed", str(e), start)
        except Exception as e:  # our own I/O (log, failure folder...): still one line, never a traceback
            message = f"{type(e).__name__}: {e}"
            self._record(message, None, None)
            return self._outcome("failed", message, start)
        finally:
            self._lock = None
            self._fold_lock = None
            if fold_lock is not None:
                fold_lock.release()
        if status in ("done", "skipped"):
            self.campaign.failure_path(self.task).unlink(missing_ok=True)
        return self._outcome(status, "; ".join([message, *self._notes]), start)

    def interrupt(self, timeout: float | None = None) -> bool:
        """SIGUSR1 to the running command of an interruptible task (``nnUNetv2_train``; not its group: its data
        loaders stop with it); waits up to ``timeout`` seconds (None: as long as it takes) for it to exit. True if it
        exited with the preempted status (checkpoint written). No-op (False) when nothing interruptible runs. Safe in
        a signal handler of the main thread."""
        proc = self._proc
        if proc is None or not self.task.interruptible or self._exited.is_set():
            return False
        self._interrupted = True
        try:
            os.kill(proc.pid, signal.SIGUSR1)
        except ProcessLookupError:
            return False
        self._exited.wait(timeout)
        return proc.returncode == PREEMPTED_EXIT_CODE

    # --- the Step a task runs through -----------------------------------------------------------------------------
    @property
    def graph(self) -> TaskGraph:
        """The campaign's task graph."""
        return self.campaign.graph

    @property
    def device(self) -> str:
        """``-device`` for the training commands (see :func:`resolve_device`)."""
        return resolve_device(self.campaign)

    @property
    def interrupted(self) -> bool:
        """Whether :meth:`interrupt` asked the running command to stop."""
        return self._interrupted

    def env(self) -> dict[str, str]:
        """The environment for the task's commands: this process's, the executor's additions, unbuffered output."""
        env = {**os.environ, **self.extra_env}
        env["PYTHONUNBUFFERED"] = "1"  # the log shows each line when it is printed
        return env

    def say(self, line: str) -> None:
        """Show a line while the task runs."""
        self.echo(line)

    def note(self, text: str) -> None:
        """Add ``text`` to the outcome's message."""
        self._notes.append(text)

    def failed_need(self) -> tuple[Task, dict[str, Any]] | None:
        """The first task this one needs that has a failure record, with the record; None when none has."""
        for need in self.graph.needs(self.task):
            record = read_failure(self.campaign, need)
            if record is not None:
                return need, record
        return None

    def command(self, cmd: list[str], env: Mapping[str, str]) -> tuple[int, str]:
        """Run ``cmd`` with its output appended to the task's log; returns the exit status and that output.

        The child stays in our process group (a kill of the group ends both) and holds the task's lock with us
        (``pass_fds``), so the lock stays held while it outlives us."""
        lock = self._lock
        if lock is None:
            raise RuntimeError("TaskExecution.command runs only inside TaskExecution.run (the task's lock held)")
        if self._on_start is not None:
            self._on_start()
            self._on_start = None
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as f:
            begin = f.tell()
            header = (f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {self.task.id} (campaign {self.campaign.name}, "
                      f"pid {os.getpid()} on {socket.gethostname()})\n$ {shown_command(cmd, env, self.extra_env)}\n")
            f.write(header.encode())
            f.flush()
            self._exited.clear()
            locks = [x for x in (lock, self._fold_lock) if x is not None]
            proc = subprocess.Popen(cmd, env=dict(env), stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    pass_fds=tuple(x.fd for x in locks if x.fd is not None))
        self._proc = proc
        for x in locks:
            x.note_child(proc.pid)
        threading.Thread(target=self._reap, args=(proc,), daemon=True).start()
        try:
            while not self._exited.wait(0.5):
                pass
        finally:
            if proc.returncode is None:  # we are interrupted (KeyboardInterrupt...): do not leave it running
                proc.terminate()
                self._exited.wait(60)
            self._proc = None
            for x in locks:
                x.note_child(None)
        with open(self.log, "rb") as f:
            f.seek(begin + len(header.encode()))
            output = f.read().decode(errors="replace")
        return int(proc.returncode if proc.returncode is not None else -1), output

    # --- internals ------------------------------------------------------------------------------------------------
    def _waiting(self, holder: LockInfo) -> None:
        self.echo(f"{self.task.label}: waiting for another run that prepares it ({holder.describe()})")

    def _outcome(self, status: Status, message: str, start: float) -> Outcome:
        log = self.log if self.log.exists() else None
        return Outcome(self.task.id, status, message, log, time.monotonic() - start)

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


# --- read-only views (status, dry run) --------------------------------------------------------------------------------
def describe_task(campaign: Campaign, task: Task, device: str | None = None) -> TaskView:
    """The task's state from the files (:meth:`Task.view`), its lock (running), the failure records of the tasks it
    needs (blocked) and its own (failed); changes nothing."""
    own = task.view(campaign.graph, os.environ, device or campaign.spec.device)
    if own.state == "done":
        return own
    holder = lock_holder(campaign.lock_path(task))
    if holder is not None:
        return TaskView(task, "running", holder.describe())
    fold_lock = campaign.fold_lock_path(task)
    holder = lock_holder(fold_lock) if fold_lock is not None else None
    if holder is not None:
        return TaskView(task, "running", f"by another campaign: {holder.describe()}")
    for need in campaign.graph.needs(task):
        if read_failure(campaign, need) is not None:
            return TaskView(task, "blocked", f"its {need.noun} step failed ({need.id})")
    failure = read_failure(campaign, task)
    if failure is not None:
        return TaskView(task, "failed", f"{failure.get('message', '?')} (log: {failure.get('log', '?')}); "
                                        "the next run retries it", own.commands)
    return own
