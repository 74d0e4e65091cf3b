"""``nnunet-transfer campaign run|status|report FILE``: multi-dataset fine-tuning campaigns."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nnunet_transfer.campaigns.spec import Campaign

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("campaign", help="one pretrained model, many datasets, folds and arms: run, status, report",
                       description="Fine-tune one pretrained model on many datasets and folds (and train a baseline "
                                   "from scratch), resumable, from a campaign file (YAML).")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    r = actions.add_parser("run", help="run every task that is not done (prepare, train, validate)")
    r.add_argument("file", help="the campaign file (YAML)")
    r.add_argument("--dry-run", action="store_true", help="print the tasks, their state and what would run; change "
                                                          "nothing")
    s = actions.add_parser("status", help="the table of tasks and their state (changes nothing)")
    s.add_argument("file", help="the campaign file (YAML)")
    rep = actions.add_parser("report", help="Dice per dataset, configuration, arm, fold, label; fine-tune vs baseline")
    rep.add_argument("file", help="the campaign file (YAML)")
    rep.add_argument("-o", "--output", metavar="DIR", help="output folder (default: <workdir>/report)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nnunet_transfer.campaigns.spec import load_campaign

    campaign = load_campaign(args.file)
    if args.action == "run":
        from nnunet_transfer.campaigns.runner import run_campaign

        return run_campaign(campaign, dry_run=args.dry_run, echo=lambda line: print(line, flush=True))
    if args.action == "status":
        from nnunet_transfer.campaigns.runner import campaign_status, format_status

        views = campaign_status(campaign)
        for line in format_status(views):
            print(line)
        return 0
    return _report(campaign, Path(args.output) if args.output else campaign.workdir / "report")


def _report(campaign: Campaign, out: Path) -> int:
    from nnunet_transfer.campaigns.report import write_report

    study = None
    if campaign.spec.arms is not None or campaign.spec.fractions is not None or campaign.spec.train_cases is not None:
        from nnunet_transfer.campaigns.report import StudyOptions
        from nnunet_transfer.campaigns.tasks import TestTask

        study = StudyOptions(campaign.reference or campaign.arms[-1].name, campaign.spec.seed,
                             "Equal budget: every point trains the same epochs and iterations per epoch (its arm's "
                             "recipe or trainer), whatever its number of training cases.",
                             tuple(campaign.graph.of_type(TestTask)))
    result = write_report(campaign.train_tasks, out, study)
    for f in result.files:
        print(f"wrote {f}")
    if result.missing:
        print(f"not done ({len(result.missing)} of {len(campaign.train_tasks)} folds, not in the report):")
        for m in result.missing:
            print(f"  {m.id}: {m.state} ({m.detail})")
    print(result.summary())
    return 0
