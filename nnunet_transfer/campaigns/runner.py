"""Run a campaign with the executor its file names, the dry run and the status table.

Exit status of a run, for every executor: 0 when every task is done, 1 when something failed or is blocked, 75
(:data:`~nnunet_transfer.core.preemption.PREEMPTED_EXIT_CODE`) when nothing failed but some tasks are left to
another run (busy) or were stopped (preempted): run again later.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from nnunet_transfer.campaigns.execute import TaskView, describe_task, resolve_device
from nnunet_transfer.campaigns.spec import Campaign, executor_entry
from nnunet_transfer.errors import CampaignError

__all__ = ["campaign_status", "format_status", "run_campaign"]

Echo = Callable[[str], None]


def run_campaign(campaign: Campaign, dry_run: bool = False, echo: Echo = print) -> int:
    """Run ``campaign`` with the executor of its file (``dry_run``: print the tasks, their state and what would
    run, change nothing); returns the exit status."""
    if dry_run:
        return _dry_run(campaign, echo)
    kind = campaign.spec.executor.kind
    entry = executor_entry(kind)
    if entry is None:  # validated when loaded: only a campaign made by hand, or an executor unregistered since
        raise CampaignError(f"{campaign.path}: executor: no executor of kind {kind!r} is registered")
    return int(entry.run(campaign, echo))


def campaign_status(campaign: Campaign) -> list[TaskView]:
    """Every task's state (done, running with its pid, failed, blocked, or what is left to do); changes nothing."""
    device = resolve_device(campaign)
    views = [describe_task(campaign, t, device) for t in campaign.graph]
    if campaign.spec.executor.kind == "slurm":
        from nnunet_transfer.campaigns.slurm import queued_tasks

        jobs = queued_tasks(campaign)
        views = [_with_job(v, *jobs[v.task.id]) if v.task.id in jobs and v.state != "done" else v for v in views]
    return views


def _with_job(view: TaskView, job_id: str, state: str) -> TaskView:
    """A task whose SLURM job is in the queue: ``running``/``queued`` with the job id and SLURM state."""
    shown = "running" if state in ("RUNNING", "COMPLETING") else "queued"
    return TaskView(view.task, shown, f"SLURM job {job_id} {state}; {view.detail}", view.commands)


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
