"""The local executor (``executor: {kind: local}``): the campaign's tasks on this machine, one at a time, or with
``gpus: [0, 1]`` one fold per GPU at a time.

Order: the task graph's (targets in file order, each target's prepare step first, then its folds by configuration,
fold, arm, then its find-best step); a task starts once the tasks it needs have ended. A failure never stops the
other targets; tasks that failed in an earlier run are tried again. With ``gpus`` one thread per GPU drains the same
queue (``CUDA_VISIBLE_DEVICES`` set for its commands). Exit status: see :mod:`nnunet_transfer.campaigns.runner`.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import Field, StrictInt, field_validator

from nnunet_transfer.campaigns.execute import Outcome, TaskExecution, run_summary
from nnunet_transfer.campaigns.spec import Campaign, ExecutorSpec, register_executor
from nnunet_transfer.campaigns.tasks import Task
from nnunet_transfer.core.progress import format_elapsed

__all__ = ["LocalExecutorSpec", "run_local"]

Echo = Callable[[str], None]


class LocalExecutorSpec(ExecutorSpec):
    """``executor: {kind: local}``: tasks one after the other; with ``gpus``, one fold per GPU at a time."""

    kind: Literal["local"]
    gpus: Annotated[tuple[Annotated[StrictInt, Field(ge=0)], ...], Field(min_length=1)] | None = None

    @field_validator("gpus")
    @classmethod
    def _unique(cls, gpus: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if gpus is not None and len(set(gpus)) != len(gpus):
            raise ValueError(f"a GPU is listed twice: {list(gpus)}")
        return gpus

    def names_gpus(self) -> bool:
        return bool(self.gpus)


def run_local(campaign: Campaign, echo: Echo = print) -> int:
    """Run the campaign's tasks not done yet on this machine; returns the exit status."""
    return _LocalRunner(campaign, echo).run()


class _LocalRunner:
    """The local executor: worker threads (one, or one per GPU) draining one queue in order."""

    def __init__(self, campaign: Campaign, echo: Echo):
        self.campaign = campaign
        self._print_lock = threading.Lock()
        self._echo = echo
        self.graph = campaign.graph
        self.tasks = list(self.graph)
        spec = campaign.spec.executor
        gpus = spec.gpus if isinstance(spec, LocalExecutorSpec) else None
        self.slots: list[int | None] = list(gpus) if gpus else [None]
        self.pending: list[Task] = list(self.tasks)
        self.results: dict[str, Outcome] = {}
        self.running: dict[str, TaskExecution] = {}
        self.cond = threading.Condition()
        self.started = 0
        self.train_times: list[float] = []
        self.stopping = False

    def echo(self, line: str) -> None:
        with self._print_lock:
            self._echo(line)

    # --- scheduling -------------------------------------------------------------------------------------------------
    def _worker(self, gpu: int | None) -> None:
        while True:
            with self.cond:
                while True:
                    if self.stopping or not self.pending:
                        return
                    task = self.graph.ready(self.pending, self.results)
                    if task is not None:
                        break
                    self.cond.wait()
                self.pending.remove(task)
                self.started += 1
                number = self.started
            try:
                outcome = self._execute(task, number, gpu)
            except Exception as e:  # TaskExecution.run does not raise for task failures: this is a bug, say it
                outcome = Outcome(task.id, "failed", f"{type(e).__name__}: {e}", None, 0.0)
            with self.cond:
                self.results[task.id] = outcome
                self.running.pop(task.id, None)
                if task.timed and outcome.status == "done":
                    self.train_times.append(outcome.elapsed)
                self.cond.notify_all()
            self.echo(self._end_line(task, number, outcome))

    def _execute(self, task: Task, number: int, gpu: int | None) -> Outcome:
        env = {"CUDA_VISIBLE_DEVICES": str(gpu)} if gpu is not None else {}
        on = f" on GPU {gpu}" if gpu is not None else ""
        log = self.campaign.log_path(task)
        execution = TaskExecution(
            self.campaign, task.id, env=env, echo=self.echo,
            on_start=lambda: self.echo(f"[{number}/{len(self.tasks)}] {task.label}: running{on} (log: {log})"))
        with self.cond:
            self.running[task.id] = execution
        return execution.run()

    # --- progress ---------------------------------------------------------------------------------------------------
    def _left(self) -> str:
        with self.cond:
            left = len(self.pending) + len(self.running)
            timed = [t for t in self.pending if t.timed and not t.done(self.graph)]
            timed += [t for t in map(self.graph.task, self.running) if t.timed]
            times = list(self.train_times)
        if not left:
            return ""
        tasks = f"{left} task" + ("s" if left > 1 else "")
        if not times or not timed:
            return f" (left: {tasks})"
        eta = sum(times) / len(times) * len(timed) / len(self.slots)
        return f" (left: {tasks}, about {format_elapsed(eta)})"

    def _end_line(self, task: Task, number: int, o: Outcome) -> str:
        text = o.describe()
        return f"[{number}/{len(self.tasks)}] {task.label}: {text}{self._left()}"

    # --- the run ----------------------------------------------------------------------------------------------------
    def _stop(self, why: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.echo(f"campaign {self.campaign.name}: {why}: the running trainings are asked to save a checkpoint and "
                  "stop; no new task starts (again to stop at once)")
        for execution in list(self.running.values()):
            execution.interrupt(timeout=0)

    def run(self) -> int:
        c = self.campaign
        c.workdir.mkdir(parents=True, exist_ok=True)
        gpus = "" if self.slots == [None] else f", one fold per GPU ({', '.join(map(str, self.slots))})"
        self.echo(f"campaign {c.name}: {len(self.tasks)} tasks ({self.graph.counts()}) on this machine{gpus}; logs in "
                  f"{c.workdir / 'logs'}")
        start = time.monotonic()
        previous = None
        if threading.current_thread() is threading.main_thread():
            def on_term(signum: int, frame: object) -> None:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
                self._stop("SIGTERM")

            previous = signal.signal(signal.SIGTERM, on_term)
        workers = [threading.Thread(target=self._worker, args=(gpu,), name=f"campaign-{gpu}", daemon=True)
                   for gpu in self.slots]
        for w in workers:
            w.start()
        try:
            for w in workers:
                while w.is_alive():
                    try:
                        w.join(0.5)
                    except KeyboardInterrupt:
                        if self.stopping:
                            raise
                        self._stop("interrupted")
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return self._summary(time.monotonic() - start)

    def _summary(self, elapsed: float) -> int:
        counts = Counter(o.status for o in self.results.values())
        return run_summary(self.campaign, counts, len(self.tasks), elapsed, self.echo,
                           not_run=len(self.tasks) - len(self.results))


register_executor("local", LocalExecutorSpec, run_local)
