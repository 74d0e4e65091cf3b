"""Multi-dataset fine-tuning campaigns: one pretrained model, many datasets, folds and arms, resumable, on this
machine (one or several GPUs) or on a SLURM cluster through submitit.

``load_campaign(path)`` validates a campaign file and builds its task graph (:class:`TaskGraph`: prepare, folds,
find-best, each with its dependencies); ``run_campaign(campaign)`` runs it with the executor its file names
(``executor.kind``: ``local``, ``slurm``, or any kind registered with :func:`register_executor`);
:class:`TaskExecution` runs one task (every executor uses it).
"""

from nnunet_transfer.campaigns.execute import Outcome, TaskExecution
from nnunet_transfer.campaigns.runner import campaign_status, run_campaign
from nnunet_transfer.campaigns.spec import (
    Campaign,
    CampaignSpec,
    ExecutorEntry,
    ExecutorSpec,
    executor_kinds,
    load_campaign,
    register_executor,
)
from nnunet_transfer.campaigns.tasks import FindBestTask, PrepareTask, Task, TaskGraph, TaskView, TrainTask

__all__ = [
    "Campaign",
    "CampaignSpec",
    "ExecutorEntry",
    "ExecutorSpec",
    "FindBestTask",
    "Outcome",
    "PrepareTask",
    "Task",
    "TaskExecution",
    "TaskGraph",
    "TaskView",
    "TrainTask",
    "campaign_status",
    "executor_kinds",
    "load_campaign",
    "register_executor",
    "run_campaign",
]
