"""Multi-dataset fine-tuning campaigns: one pretrained model, many datasets, folds and arms, resumable, on this
machine (one or several GPUs) or on a SLURM cluster through submitit.

``load_campaign(path)`` validates a campaign file and expands its tasks; ``run_campaign(campaign)`` runs them with
the file's executor; :class:`TaskExecution` runs one task (every executor uses it).
"""

from nnunet_transfer.campaigns.execute import Outcome, TaskExecution
from nnunet_transfer.campaigns.runner import campaign_status, run_campaign
from nnunet_transfer.campaigns.spec import Campaign, CampaignSpec, load_campaign
from nnunet_transfer.campaigns.tasks import FindBestTask, PrepareTask, TrainTask

__all__ = [
    "Campaign",
    "CampaignSpec",
    "FindBestTask",
    "Outcome",
    "PrepareTask",
    "TaskExecution",
    "TrainTask",
    "campaign_status",
    "load_campaign",
    "run_campaign",
]
