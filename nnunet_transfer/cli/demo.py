"""``nnunet-transfer demo``: the whole path on synthetic data with the stock nnU-Net commands."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end to end on synthetic data: pretrain, fine-tune with the stock CLI, report")
    p.add_argument("--workdir", default="nnunet_transfer_demo", help="folder for data and results (created)")
    p.add_argument("--force", action="store_true", help="delete a previous demo in --workdir first")
    p.add_argument("--baseline", action="store_true",
                   help="also train the target from scratch on the same budget and compare the validation Dice "
                        "(about doubles the target's training time)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nnunet_transfer.demo import run_demo

    return run_demo(Path(args.workdir), force=args.force, baseline=args.baseline)
