"""Run a campaign: the local executor (one task at a time, or one fold per GPU), the dry run and the status table.

Local order: targets in file order, each target's prepare step first, then its folds (configuration, fold, arm).
A failure never stops the other targets; tasks that failed in an earlier run are tried again. With ``gpus: [0, 1]``
one thread per GPU drains the same queue (``CUDA_VISIBLE_DEVICES`` set for its commands); a fold waits for its
target's prepare step. Exit status: 0 when every task is done, 1 when something failed or is blocked, 75
(:data:`~nnunet_transfer.core.preemption.PREEMPTED_EXIT_CODE`) when nothing failed but some tasks are left to
another run (busy) or were stopped (preempted): run again later.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

from nnunet_transfer.campaigns.execute import (
    Outcome,
    TaskExecution,
    TaskView,
    describe_task,
    resolve_device,
    run_summary,
)
from nnunet_transfer.campaigns.spec import Campaign
from nnunet_transfer.campaigns.state import train_done
from nnunet_transfer.campaigns.tasks import FindBestTask, PrepareTask, TrainTask
from nnunet_transfer.demo.progress import format_elapsed

__all__ = ["campaign_status", "format_status", "run_campaign"]

Echo = Callable[[str], None]
Task = PrepareTask | TrainTask | FindBestTask


def run_campaign(campaign: Campaign, dry_run: bool = False, echo: Echo = print) -> int:
    """Run ``campaign`` with the executor of its file (``dry_run``: print the tasks, their state and what would
    run, change nothing); returns the exit status."""
    if dry_run:
        return _dry_run(campaign, echo)
    if campaign.spec.executor.kind == "slurm":
        from nnunet_transfer.campaigns.slurm import run_slurm  # type: ignore[attr-defined]

        return int(run_slurm(campaign, echo))
    return _LocalRunner(campaign, echo).run()


def campaign_status(campaign: Campaign) -> list[TaskView]:
    """Every task's state (done, running with its pid, failed, blocked, or what is left to do); changes nothing."""
    device = resolve_device(campaign)
    return [describe_task(campaign, t, device) for t in campaign.tasks]


def format_status(views: Sequence[TaskView]) -> list[str]:
    """The status table (task, state, detail) and a count per state."""
    rows = [(v.task.id, v.state, v.detail) for v in views]
    w0 = max([len("task"), *(len(r[0]) for r in rows)])
    w1 = max([len("state"), *(len(r[1]) for r in rows)])
    lines = [f"{'task':<{w0}}  {'state':<{w1}}  detail"]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    counts = Counter(v.state for v in views)
    lines.append(f"{len(views)} tasks: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return lines


def _dry_run(campaign: Campaign, echo: Echo) -> int:
    views = campaign_status(campaign)
    echo(f"campaign {campaign.name} ({campaign.path}): {len(views)} tasks, executor {campaign.spec.executor.kind}, "
         f"state in {campaign.workdir}")
    for line in format_status(views)[:-1]:
        echo(line)
    todo = [v for v in views if v.commands and v.state != "running"]
    if todo:
        echo("a run would now start:")
        for v in todo:
            for cmd in v.commands:
                echo(f"  {v.task.id}: {cmd}")
    echo(format_status(views)[-1])
    echo("dry run: nothing changed")
    return 0


class _LocalRunner:
    """The local executor: worker threads (one, or one per GPU) draining one queue in order."""

    def __init__(self, campaign: Campaign, echo: Echo):
        self.campaign = campaign
        self._print_lock = threading.Lock()
        self._echo = echo
        self.tasks = campaign.tasks
        gpus = getattr(campaign.spec.executor, "gpus", None)
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
    def _next(self) -> Task | None:
        """The first pending task that can start: a fold only once its target's prepare step has ended, a find-best
        step once its folds have."""
        for task in self.pending:
            if isinstance(task, TrainTask) and task.prepare_id not in self.results:
                continue
            if isinstance(task, FindBestTask) and not all(i in self.results for i in task.train_ids):
                continue
            return task
        return None

    def _worker(self, gpu: int | None) -> None:
        while True:
            with self.cond:
                while True:
                    if self.stopping or not self.pending:
                        return
                    task = self._next()
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
                if isinstance(task, TrainTask) and outcome.status == "done":
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
            trains = [t for t in self.pending if isinstance(t, TrainTask) and not train_done(t)]
            trains += [self.campaign.task(i) for i in self.running if isinstance(self.campaign.task(i), TrainTask)]
            times = list(self.train_times)
        if not left:
            return ""
        tasks = f"{left} task" + ("s" if left > 1 else "")
        if not times or not trains:
            return f" (left: {tasks})"
        eta = sum(times) / len(times) * len(trains) / len(self.slots)
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
        n_train = sum(isinstance(t, TrainTask) for t in self.tasks)
        n_best = sum(isinstance(t, FindBestTask) for t in self.tasks)
        best = f", {n_best} find-best" if n_best else ""
        self.echo(f"campaign {c.name}: {len(self.tasks)} tasks ({len(self.tasks) - n_train - n_best} prepare, "
                  f"{n_train} train{best}) on this machine{gpus}; logs in {c.workdir / 'logs'}")
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
