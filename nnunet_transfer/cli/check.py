"""``nnunet-transfer check``: dry run of the load against the network a target dataset's plans build."""

from __future__ import annotations

import argparse
import sys

from nnunet_transfer.cli._common import add_load_options, write_json
from nnunet_transfer.errors import TransferError

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="dry-run the adaptive load against the network a target dataset's plans build")
    p.add_argument("checkpoint")
    p.add_argument("-d", "--dataset", required=True, help="target dataset name or ID")
    p.add_argument("-c", "--configuration", required=True, help="nnU-Net configuration, e.g. 3d_fullres")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("--min-coverage", type=float, default=0.5, help="guard: minimum coverage (default 0.5)")
    p.add_argument("--rename", action="append", default=[], metavar="PATTERN=REPLACEMENT",
                   help="rename rule, the pattern matched against the whole key; repeatable")
    p.add_argument("-v", "--verbose", action="store_true", help="print the table of every tensor")
    add_load_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nnunet_transfer.core.loading.checkpoint import read_checkpoint
    from nnunet_transfer.core.loading.keys import parse_rename_rule
    from nnunet_transfer.core.loading.loader import LoadOptions, plan_load
    from nnunet_transfer.nnunet.datasets import find_target_dataset
    from nnunet_transfer.nnunet.networks import build_network

    try:
        rename = tuple(parse_rename_rule(r) for r in args.rename)
    except ValueError as e:
        raise TransferError(str(e)) from None
    target = find_target_dataset(args.dataset, args.plans)
    source = read_checkpoint(args.checkpoint, container=args.container, allow_globals=args.allow_global,
                             trust_checkpoint=args.trust_checkpoint)
    network = build_network(target.plans, args.configuration, target.dataset_json)
    options = LoadOptions.from_kwargs(min_coverage=args.min_coverage, rename=rename)
    report, _ = plan_load(network, source, target.dataset_json.get("labels"), options)
    code = 0 if report.passed else 1
    print(report.table() if args.verbose else report.summary())
    if code:
        print(f"FAIL: coverage {report.coverage:.3f} below the minimum {report.min_coverage}. Main reasons: "
              + "; ".join(report.main_reasons()), file=sys.stderr)
    write_json(args.json, report.to_dict())
    return code
