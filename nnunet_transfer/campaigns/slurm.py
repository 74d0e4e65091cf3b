"""The SLURM executor (``executor: {kind: slurm, ...}``), through submitit: each task of the campaign's graph as a
job that depends (``afterok``) on the jobs of the tasks it needs. Per target: its prepare task as one job, its folds
as one array job after it, its find-best step (``find_best:``) as one job after the folds. Each job runs its task as
a local run does (:class:`TaskExecution`).

Preemption and time limits: SLURM (or ``scancel --signal``) signals every process of the job's step, the training
included; submitit catches SIGUSR2 (``#SBATCH --signal=USR2@<slurm_signal_delay_s>``, 90 s before the time limit,
or at a preemption) and calls :meth:`TaskJob.checkpoint`, which passes the request on to ``nnUNetv2_train``
(:meth:`TaskExecution.interrupt`: the AdaptiveFT trainers finish the epoch, write ``checkpoint_latest.pth`` and exit
75) and waits for it; submitit then requeues the job (``scontrol requeue``), and the task runs again, which continues
the fold with ``--c``. A job is requeued after a time limit at most ``slurm_max_num_timeout`` times (submitit's
default 3); preemptions do not count.

A task that other tasks need and that does not end done makes its job fail (:class:`_NotDone`), so that SLURM never
starts their jobs (``afterok``); the run cancels them and reports them blocked.

The executor section takes submitit's own parameter names (``timeout_min``, ``cpus_per_task``, ``gpus_per_node``,
``mem_gb``, ``slurm_partition``, ``slurm_array_parallelism``, ``slurm_additional_parameters``...), checked against
submitit itself when the campaign file is loaded (:mod:`nnunet_transfer.campaigns._submitit`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import submitit
from pydantic import ConfigDict, TypeAdapter, ValidationError, model_validator
from submitit.core.utils import DelayedSubmission, FailedJobError
from submitit.helpers import Checkpointable
from submitit.slurm.slurm import SlurmJob

from nnunet_transfer.campaigns._submitit import constructor_parameters, preemption_signal, submitit_parameters
from nnunet_transfer.campaigns.execute import Outcome, TaskExecution, run_summary
from nnunet_transfer.campaigns.spec import Campaign, ExecutorSpec, register_executor
from nnunet_transfer.campaigns.tasks import Task, TaskGraph
from nnunet_transfer.core.preemption import PREEMPTED_EXIT_CODE
from nnunet_transfer.errors import SlurmError  # defined in errors.py; importable from here as before

__all__ = ["JobBatch", "SlurmError", "SlurmExecutorSpec", "TaskJob", "jobs_folder", "plan_jobs", "queued_tasks",
           "run_slurm", "submitit_parameters"]

Echo = Callable[[str], None]

#: keys the campaign sets itself on every job
RESERVED = {"name": "jobs are named after the campaign and target", "slurm_job_name": "jobs are named after the "
            "campaign and target"}
#: keys that must stay 1: a task is one nnUNetv2_train process (submitit would start one copy per SLURM task)
SINGLE = ("nodes", "tasks_per_node", "slurm_nodes", "slurm_ntasks_per_node", "slurm_tasks_per_node")
#: seconds between looks at the jobs' output and result files; sacct is asked every SACCT_SECONDS, and at most
#: every SACCT_MIN_SECONDS when a result file appears
POLL_SECONDS = 1.0
SACCT_SECONDS = 15.0
SACCT_MIN_SECONDS = 2.0
#: sacct states after which a job runs no more (a requeued job goes back to PENDING)
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "REVOKED"}
#: sacct states of a job that runs or will run again: a result file seen then is from an earlier run
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED", "RESIZING",
          "PREEMPTED"}


class _NotDone(RuntimeError):
    """Raised by the job of a task that other tasks need when it did not end done: SLURM counts the job FAILED, so
    that their jobs (``afterok``) never start. Not an error of the user's: the message is the task's outcome as JSON,
    read back by the waiting run."""

    MARK = "TaskNotDone: "

    @classmethod
    def of(cls, outcome: Outcome) -> _NotDone:
        return cls(cls.MARK + json.dumps({"status": outcome.status, "message": outcome.message,
                                          "log": str(outcome.log) if outcome.log else None,
                                          "elapsed": outcome.elapsed}))

    @classmethod
    def outcome(cls, task_id: str, text: str) -> Outcome | None:
        """The outcome in a job's error text, or None."""
        line = next((ln for ln in reversed(text.splitlines()) if cls.MARK in ln), None)
        if line is None:
            return None
        try:
            d = json.loads(line.split(cls.MARK, 1)[1])
            return Outcome(task_id, d["status"], d["message"], Path(d["log"]) if d["log"] else None,
                           float(d["elapsed"]))
        except (ValueError, KeyError, TypeError):
            return None


# --- the executor section ------------------------------------------------------------------------------------------
def _checked(kind: Any, value: Any) -> Any:
    """``value`` validated against submitit's declared type: scalars converted (``"60"`` -> 60), others as given."""
    converted = TypeAdapter(kind).validate_python(value)
    return converted if isinstance(converted, (bool, int, float, str, type(None))) else value


def _unknown(key: str, known: dict[str, Any]) -> str:
    allowed = [k for k in known if k not in RESERVED]
    close = [f"slurm_{key}"] if f"slurm_{key}" in allowed else difflib.get_close_matches(key, allowed, n=2,
                                                                                        cutoff=0.75)
    if close:
        return f"{key}: not a parameter of submitit's SLURM executor (did you mean {' or '.join(close)}?)"
    generic = sorted(k for k in allowed if not k.startswith("slurm_"))
    specific = sorted(k.removeprefix("slurm_") for k in allowed if k.startswith("slurm_"))
    return (f"{key}: not a parameter of submitit's SLURM executor (submitit's names: {', '.join(generic)}, or "
            f"slurm_ followed by one of {', '.join(specific)})")


class SlurmExecutorSpec(ExecutorSpec):
    """``executor: {kind: slurm, ...}``: submitit's own parameter names (``slurm_partition``, ``timeout_min``...).

    ``folder``: where submitit keeps the jobs' scripts, pickles and logs (default ``<workdir>/slurm``; relative to
    the campaign file). Every other key is passed to ``submitit.AutoExecutor`` as is.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: Literal["slurm"]
    folder: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _submitit_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = submitit_parameters()
        out, problems = dict(data), []
        for key, value in data.items():
            if key in ("kind", "folder"):
                continue
            if not isinstance(key, str) or key not in known:
                problems.append(_unknown(str(key), known))
            elif key in RESERVED:
                problems.append(f"{key}: set by the campaign ({RESERVED[key]})")
            else:
                try:
                    out[key] = _checked(known[key], value)
                except ValidationError as e:
                    err = e.errors()[0]
                    where = "".join(f"[{p!r}]" for p in err["loc"])
                    problems.append(f"{key}{where}: {err['msg']} (got {value!r})")
                    continue
                if key in SINGLE and out[key] not in (None, 1):
                    problems.append(f"{key}: must be 1 (one job per task: nnUNetv2_train is one process; got "
                                    f"{value!r})")
        if problems:
            raise ValueError("; ".join(problems))
        return out

    @property
    def parameters(self) -> dict[str, Any]:
        """The submitit parameters (every key but ``kind`` and ``folder``)."""
        return dict(self.model_extra or {})


# --- one job -------------------------------------------------------------------------------------------------------
def _job_echo(line: str) -> None:
    print(line, flush=True)


class TaskJob(Checkpointable):
    """The callable a SLURM job runs: one task of the campaign (:meth:`TaskExecution.run`), returning its
    :class:`Outcome`. A submitit ``Checkpointable``: on preemption or time limit :meth:`checkpoint` stops the training
    with a checkpoint and hands submitit the same task to run again."""

    def __init__(self, campaign: Campaign, task_id: str, interrupt_timeout: float) -> None:
        self.campaign = campaign
        self.task_id = task_id
        self.interrupt_timeout = interrupt_timeout
        self._execution: TaskExecution | None = None

    def __call__(self) -> Outcome:
        restarts = _restart_count()
        _job_echo(f"{self.task_id}: SLURM job {_job_id()}, run {restarts + 1}" + (" (requeued)" if restarts else ""))
        self._execution = TaskExecution(self.campaign, self.task_id, echo=_job_echo)
        try:
            outcome = self._execution.run()
        finally:
            self._execution = None
        if outcome.status == "failed" and "timed-out too many times" in outcome.message:
            # submitit's UncompletedJobError, raised in the signal handler after the checkpoint
            outcome = dataclasses.replace(outcome, message=(
                "reached its time limit more often than slurm_max_num_timeout allows (submitit's default 3; the "
                "checkpoint is saved): raise timeout_min or slurm_max_num_timeout, and run again to continue"))
        _job_echo(f"{self.task_id}: {outcome.status}: {outcome.message}")
        if outcome.status == "preempted" and _requeue_self():
            # the training stopped on a signal that did not come through submitit (SIGTERM of a preemption with
            # PreemptMode=REQUEUE, scontrol requeue...): like submitit, requeue and leave no result
            _job_echo(f"{self.task_id}: checkpoint written (the training stopped on a signal); requeued, it continues "
                      "with --c")
            sys.exit(-1)
        graph = self.campaign.graph
        if graph.dependents(graph.task(self.task_id)) and outcome.status not in ("done", "skipped"):
            raise _NotDone.of(outcome)
        return outcome

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Called by submitit in the job's main thread on SIGUSR2 (preemption, time limit near): asks the running
        ``nnUNetv2_train`` to stop at the end of its epoch with a checkpoint, waits for it (at most
        ``interrupt_timeout`` seconds), and returns the task to run again after the requeue (``--c``)."""
        execution = self._execution
        if execution is not None:
            _job_echo(f"{self.task_id}: preempted or near the time limit: asking the training to save and stop "
                      f"(waiting up to {self.interrupt_timeout:.0f} s)")
            saved = execution.interrupt(self.interrupt_timeout)
            _job_echo(f"{self.task_id}: " + ("checkpoint written; requeued, it continues with --c" if saved else
                                             "no checkpoint written now (nothing was training, or it did not stop "
                                             "in time); requeued, it continues from its last checkpoint"))
        _ignore_requeue_signals()
        return DelayedSubmission(TaskJob(self.campaign, self.task_id, self.interrupt_timeout))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_execution"] = None  # a running process: never pickled
        return state


#: the name jobs submitted by earlier versions were pickled under
CheckpointableTaskJob = TaskJob


def _requeue_self() -> bool:
    """``scontrol requeue`` this job (as submitit does after a checkpoint); False when SLURM refuses (the job is
    cancelled: then it ends with its outcome). Submitit's preemption signal is ignored from now on: this run only
    ends."""
    signal.signal(preemption_signal(), signal.SIG_IGN)
    _ignore_requeue_signals()
    job = _job_id()
    if job == "?" or not os.environ.get("SLURM_JOB_ID"):
        return False
    try:
        proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _ignore_requeue_signals() -> None:
    """Ignore SIGTERM from here on, in this process and the ``scontrol requeue`` it starts next: a requeue signals
    every process of the job, ``scontrol`` included, which could die before it reports the requeue done (submitit
    would then fail the job). The job only exits after the requeue."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _restart_count() -> int:
    value = os.environ.get("SLURM_RESTART_COUNT", "0")
    return int(value) if value.isdigit() else 0


def _job_id() -> str:
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '?')}"
    return os.environ.get("SLURM_JOB_ID", "?")


# --- the run -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobBatch:
    """Tasks submitted as one job (one task) or one array job (several), after the jobs of the tasks ``after``."""

    tasks: tuple[Task, ...]
    after: tuple[str, ...]  # ids of the tasks whose jobs these wait for (afterok)


def plan_jobs(graph: TaskGraph, queued: Container[str] = ()) -> list[JobBatch]:
    """The jobs a SLURM run submits for ``graph``, in its order: every task not done and not ``queued`` (ids of
    tasks whose jobs an earlier run left in the queue); a task that only serves the tasks that need it (a prepare
    step) only when one of those is submitted. Each waits for the jobs (submitted or queued) of the tasks it needs;
    consecutive tasks of one kind and dataset that wait for the same jobs, and do not need each other, go in as one
    array job: per target its prepare, an array of its folds, its find-best."""
    fresh: set[str] = set()
    for task in reversed(list(graph)):
        if task.id in queued or task.done(graph):
            continue
        if not task.serves_dependents or any(d.id in fresh for d in graph.dependents(task)):
            fresh.add(task.id)
    batches: list[JobBatch] = []
    for task in graph:
        if task.id not in fresh:
            continue
        after = tuple(i for i in task.needs if i in fresh or i in queued)
        last = batches[-1] if batches else None
        if last is not None and (last.tasks[0].kind, last.tasks[0].dataset, last.after) == (
                task.kind, task.dataset, after) and not set(task.needs) & {t.id for t in last.tasks}:
            batches[-1] = JobBatch((*last.tasks, task), after)
        else:
            batches.append(JobBatch((task,), after))
    return batches


@dataclass
class _Watched:
    """A submitted (or already queued) task and what was last shown of it."""

    number: int
    task: Task
    job: SlurmJob[Any]
    shown: str = "queued"  # queued | running | ended
    runs: int = 0
    read: int = 0  # bytes of the job's stdout already read
    outcome: Outcome | None = None
    dependents: list[_Watched] = field(default_factory=list)


class _SlurmRun:
    def __init__(self, campaign: Campaign, echo: Echo) -> None:
        spec = campaign.spec.executor
        assert isinstance(spec, SlurmExecutorSpec)  # run_slurm is registered for kind slurm only
        self.campaign = campaign
        self.graph = campaign.graph
        self.echo = echo
        self.params = spec.parameters
        self.folder = jobs_folder(campaign)
        delay = self.params.get("slurm_signal_delay_s", 90)
        # submitit signals the job signal_delay_s before the time limit: leave a margin for its requeue
        self.interrupt_timeout = float(max(10, int(delay) - 15))
        self.watched: list[_Watched] = []
        self.total = len(self.graph)
        self.finished = 0
        self._last_sacct = float("-inf")

    # --- submission ---------------------------------------------------------------------------------------------
    def _executor(self, name: str, dependency: str | None) -> submitit.AutoExecutor:
        params = dict(self.params)
        ctor = {k: params.pop(k) for k in list(params) if k in constructor_parameters()}
        extra = dict(params.pop("slurm_additional_parameters", None) or {})
        deps = [d for d in (extra.get("dependency"), params.pop("slurm_dependency", None), dependency) if d]
        if deps:
            extra["dependency"] = ",".join(deps)
        if extra:
            params["slurm_additional_parameters"] = extra
        try:
            ex = submitit.AutoExecutor(self.folder, cluster="slurm", **ctor)
        except RuntimeError as e:  # no srun: not on a SLURM cluster
            raise SlurmError(f"{self.campaign.path}: executor: kind slurm, but SLURM is not usable here ({e}); run "
                             "the campaign where sbatch and srun work, or use executor: {kind: local}") from None
        ex.update_parameters(name=name, **params)
        return ex

    def submit(self) -> None:
        """Submit the graph's tasks not done yet (:func:`plan_jobs`), each job after the jobs of the tasks it needs;
        watch the jobs of an earlier run that are still queued instead of submitting them again."""
        queued = self._queued_jobs()
        batches = plan_jobs(self.graph, queued)
        fresh = {t.id for b in batches for t in b.tasks}
        numbers = {t.id: n for n, t in enumerate(self.graph, start=1)}
        watched: dict[str, _Watched] = {}
        for task in self.graph:
            n = numbers[task.id]
            if task.id in queued:
                watched[task.id] = self._watch(n, task, queued[task.id], queued, ())
            elif task.id not in fresh:  # done, or it serves only tasks that are all queued or done
                self.finished += 1
                what = "done already" if task.done(self.graph) else "done (the tasks that need it are queued)"
                self.echo(f"[{n}/{self.total}] {task.label}: {what}")
        for batch in batches:
            after = tuple(watched[i].job.job_id for i in batch.after)
            first = batch.tasks[0]
            jobs = self._submit_many(f"{self.campaign.name}:{first.dataset}:{first.kind}", list(batch.tasks),
                                     f"afterok:{':'.join(after)}" if after else None)
            for t, job in zip(batch.tasks, jobs, strict=True):
                watched[t.id] = self._watch(numbers[t.id], t, job, queued, after)
        for w in self.watched:
            for need in w.task.needs:
                if need in watched:
                    watched[need].dependents.append(w)

    def _submit_many(self, name: str, tasks: list[Task], dependency: str | None) -> list[SlurmJob[Any]]:
        ex = self._executor(name, dependency)
        jobs: list[Any] = []
        try:  # submitit prints sbatch's complaint too: our error says it once
            with contextlib.redirect_stderr(io.StringIO()):
                if len(tasks) == 1:
                    jobs = [ex.submit(TaskJob(self.campaign, tasks[0].id, self.interrupt_timeout))]
                else:
                    with ex.batch():
                        jobs = [ex.submit(TaskJob(self.campaign, t.id, self.interrupt_timeout)) for t in tasks]
        except (FailedJobError, subprocess.CalledProcessError, OSError) as e:
            raise SlurmError(f"{self.campaign.path}: sbatch refused the job {name}: {_last_line(str(e))}") from None
        return jobs

    def _watch(self, number: int, task: Task, job: SlurmJob[Any], queued: dict[str, Any],
               after: tuple[str, ...]) -> _Watched:
        w = _Watched(number, task, job)
        self.watched.append(w)
        nouns = sorted({n.noun for n in self.graph.needs(task)})
        bases = sorted({j.split("_")[0] for j in after}, key=lambda j: (len(j), j))
        dep = f" after its {'/'.join(nouns)} job{'s' if len(bases) > 1 else ''} {', '.join(bases)}" if after else ""
        what = "already in the queue as" if task.id in queued else "submitted as"
        self.echo(f"[{number}/{self.total}] {task.label}: {what} SLURM job {job.job_id}{dep}")
        return w

    def _queued_jobs(self) -> dict[str, Any]:
        """Tasks of this campaign whose jobs (from an earlier ``campaign run``) are still pending or running: they
        are watched, not submitted again."""
        return {task_id: SlurmJob(folder=self.folder, job_id=job_id)
                for task_id, (job_id, _) in queued_tasks(self.campaign, self.folder).items()}

    # --- waiting ------------------------------------------------------------------------------------------------
    def wait(self) -> None:
        while any(w.shown != "ended" for w in self.watched):
            self._sacct(SACCT_SECONDS)
            for w in self.watched:
                if w.shown == "ended":
                    continue
                self._news(w)
                state = self._state(w)
                if w.job.paths.result_pickle.exists():
                    # the result of this run, unless SLURM runs the job again (requeued after that result)
                    if state in ACTIVE:
                        self._sacct(SACCT_MIN_SECONDS)
                        state = self._state(w)
                    if state not in ACTIVE:
                        self._ended(w, state)
                elif state in ENDED:
                    self._ended(w, state)
            time.sleep(POLL_SECONDS)

    def _sacct(self, interval: float) -> None:
        """Ask sacct about every job at once if the last time was ``interval`` seconds ago or more."""
        now = time.monotonic()
        if now - self._last_sacct >= interval:
            SlurmJob.watcher.update()
            self._last_sacct = now

    def _state(self, w: _Watched) -> str:
        return SlurmJob.watcher.get_state(w.job.job_id, mode="cache").split(" ")[0]

    def _news(self, w: _Watched) -> None:
        """Show what the job says in its output (:class:`TaskJob`'s lines): a run starts, a preemption is saved."""
        path = w.job.paths.stdout
        try:
            if path.stat().st_size <= w.read:
                return
            with open(path, "rb") as f:
                f.seek(w.read)
                chunk = f.read()
        except OSError:
            return
        end = chunk.rfind(b"\n") + 1  # whole lines only
        w.read += end
        head = f"[{w.number}/{self.total}] {w.task.label}"
        for line in chunk[:end].decode(errors="replace").splitlines():
            if not line.startswith(f"{w.task.id}: "):
                continue
            text = line[len(w.task.id) + 2:]
            if m := re.match(r"SLURM job \S+, run (\d+)", text):
                w.shown, w.runs = "running", int(m.group(1))
                again = f" again (run {w.runs}, requeued)" if w.runs > 1 else ""
                self.echo(f"{head}: running{again} (SLURM job {w.job.job_id}; log: "
                          f"{self.campaign.log_path(w.task)})")
            elif text.startswith("preempted or near the time limit"):
                self.echo(f"{head}: preempted or at its time limit (SLURM job {w.job.job_id}): the training saves "
                          "a checkpoint at the end of its epoch")
            elif text.startswith("preempted: "):  # the training stopped on a signal SLURM sent it directly
                self.echo(f"{head}: preempted (SLURM job {w.job.job_id}): {text.removeprefix('preempted: ')}")
            elif "requeued" in text:
                w.shown = "queued"
                saved = text.startswith("checkpoint written")
                self.echo(f"{head}: requeued (SLURM job {w.job.job_id}); it continues from "
                          + ("the checkpoint it just wrote" if saved else "its last checkpoint"))

    def _ended(self, w: _Watched, state: str) -> None:
        try:
            outcome = w.job.result()
            if not isinstance(outcome, Outcome):
                raise TypeError(f"the job returned {outcome!r}")
        except Exception as e:  # the job died (cancelled, out of memory, node failure) or raised
            outcome = _NotDone.outcome(w.task.id, str(e)) or Outcome(
                w.task.id, "failed", f"SLURM job {w.job.job_id} ended {state or 'without a result'}: {_job_error(e)} "
                f"(job log: {w.job.paths.stderr})", self.campaign.log_path(w.task), 0.0)
        self._finish(w, outcome)
        if outcome.status not in ("done", "skipped"):
            self._block(w, outcome)

    def _block(self, w: _Watched, outcome: Outcome) -> None:
        """The tasks that need ``w``'s never start (afterok): cancel their jobs, report them blocked, and theirs."""
        blocked = [d for d in w.dependents if d.shown != "ended" and not d.job.paths.result_pickle.exists()]
        self._cancel([d.job.job_id for d in blocked])
        for d in blocked:
            o = Outcome(d.task.id, "blocked", f"its {w.task.noun} step {outcome.status}: {outcome.message}", None, 0.0)
            self._finish(d, o, " cancelled")
            self._block(d, o)

    def _cancel(self, job_ids: list[str]) -> None:
        """``scancel`` these jobs, a whole array by its id when all its tasks are among them (cancelling one task of a
        pending array splits it off as a job of its own, which SLURM may start before the cancel reaches it)."""
        watched: dict[str, set[str]] = {}
        for w in self.watched:
            watched.setdefault(w.job.job_id.split("_")[0], set()).add(w.job.job_id)
        cancel = set(job_ids)
        ids = []
        for base, members in watched.items():
            if "_" in next(iter(members)) and members <= cancel:
                ids.append(base)
                cancel -= members
        ids += sorted(cancel)
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, timeout=60)

    def _finish(self, w: _Watched, o: Outcome, job_note: str = "") -> None:
        w.shown, w.outcome = "ended", o
        self.finished += 1
        text = o.describe()
        left = self.total - self.finished
        self.echo(f"[{w.number}/{self.total}] {w.task.label}: {text} (SLURM job {w.job.job_id}{job_note})"
                  + (f" (left: {left} task{'s' if left > 1 else ''})" if left else ""))

    # --- the end ------------------------------------------------------------------------------------------------
    def summary(self, elapsed: float) -> int:
        counts = Counter(w.outcome.status for w in self.watched if w.outcome is not None)
        return run_summary(self.campaign, counts, self.total, elapsed, self.echo,
                           already=self.total - len(self.watched), where=" on SLURM",
                           left_why="stopped without a requeue")

    def detach(self) -> int:
        running = [w for w in self.watched if w.shown != "ended"]
        ids = sorted({w.job.job_id.split("_")[0] for w in running})
        self.echo(f"campaign {self.campaign.name}: stopped waiting; {len(running)} tasks keep running on SLURM (jobs "
                  f"{', '.join(ids)}). Watch them with `nnunet-transfer campaign status {self.campaign.path}` or "
                  f"`squeue -j {','.join(ids)}`; `nnunet-transfer campaign run {self.campaign.path}` again waits for "
                  "them without submitting them twice")
        return PREEMPTED_EXIT_CODE


def _job_error(e: Exception) -> str:
    """One line from submitit's job errors: the last line of the job's traceback, or the first of its message."""
    text = str(e)
    parts = text.split("-" * 22)
    if len(parts) >= 3:  # FailedJobError: the job's traceback between two dashed lines
        return _last_line(parts[1])
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " ".join(lines[:2])[:400] if lines else type(e).__name__


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else text.strip()
    return line if len(line) <= 400 else line[:397] + "..."


def jobs_folder(campaign: Campaign) -> Path:
    """submitit's folder of the campaign's jobs: ``executor.folder`` (relative to the campaign file) or
    ``<workdir>/slurm``."""
    spec = campaign.spec.executor
    folder = Path(spec.folder).expanduser() if getattr(spec, "folder", None) else campaign.workdir / "slurm"
    return folder if folder.is_absolute() else (campaign.path.parent / folder)


def queued_tasks(campaign: Campaign, folder: Path | None = None) -> dict[str, tuple[str, str]]:
    """Task id -> (SLURM job id, SLURM state) of the campaign's jobs in the queue (pending or running): ``squeue``
    and each job's submission pickle in the jobs folder. Empty where squeue cannot be asked."""
    folder = jobs_folder(campaign) if folder is None else folder
    try:
        out = subprocess.run(["squeue", "-h", "-r", "--me", "-o", "%i %T"], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found: dict[str, tuple[str, str]] = {}
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        job_id, _, state = line.strip().partition(" ")
        pickle = folder / f"{job_id}_submitted.pkl"
        if not pickle.is_file():
            continue
        try:
            function = DelayedSubmission.load(pickle).function
        except Exception:  # not ours, or from another version: leave it alone
            continue
        if isinstance(function, TaskJob) and function.task_id in campaign.graph and \
                getattr(function.campaign, "path", None) == campaign.path:
            found[function.task_id] = (job_id, state or "?")
    return found


def run_slurm(campaign: Campaign, echo: Echo = print) -> int:
    """Run ``campaign`` on SLURM: submit the jobs of the tasks not done yet, print one line per task as its job
    starts and ends, wait for all, print a summary. Exit status as a local run: 0 when every task is done, 1 when
    something failed or is blocked, 75 when tasks are left (busy, preempted without a requeue, or Ctrl-C: the jobs
    keep running)."""
    run = _SlurmRun(campaign, echo)
    run._executor("check", None)  # SlurmError now if SLURM is not usable here
    campaign.workdir.mkdir(parents=True, exist_ok=True)
    echo(f"campaign {campaign.name}: {run.total} tasks ({campaign.graph.counts()}) on SLURM; jobs in {run.folder}, "
         f"logs in {campaign.workdir / 'logs'}")
    start = time.monotonic()
    try:
        try:
            run.submit()
        except SlurmError:
            if run.watched:  # some targets' jobs went in before sbatch refused one
                ids = sorted({w.job.job_id.split("_")[0] for w in run.watched})
                echo(f"campaign {campaign.name}: the jobs submitted so far keep running ({', '.join(ids)}); a new "
                     f"`nnunet-transfer campaign run {campaign.path}` waits for them")
            raise
        run.wait()
    except KeyboardInterrupt:
        return run.detach()
    return run.summary(time.monotonic() - start)


register_executor("slurm", SlurmExecutorSpec, run_slurm)
