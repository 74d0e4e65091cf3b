"""``nnunet-transfer check``: dry run of the load against the network a target dataset's plans build.

With ``--recipe`` the options are exactly the recipe's ``pretrained:`` section (loader flags given explicitly override
single options) and its ``pretrained.checkpoint`` is the default checkpoint: the load the trainer will do. Without it,
``-tr`` of one of our trainers takes that trainer's recipe (``NNUNET_TRANSFER_RECIPE`` where set, as the trainer does).
A recipe with LoRA adapters puts them into the network first, as the trainer does (they are reported ``new``).
"""

from __future__ import annotations

import argparse
import sys

from nnunet_transfer.cli._common import add_json_option, add_load_flags, load_options_from_args, write_json
from nnunet_transfer.errors import TrainerNotFoundError, TransferError

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="dry-run the adaptive load against the network a target dataset's plans build")
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="the pretrained checkpoint (optional when the --recipe names pretrained.checkpoint)")
    p.add_argument("-d", "--dataset", required=True, help="target dataset name or ID")
    p.add_argument("-c", "--configuration", required=True, help="nnU-Net configuration, e.g. 3d_fullres")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-tr", "--trainer", default=None, metavar="NAME",
                   help="trainer class whose network to build and, for our trainers, whose recipe's pretrained "
                        "section gives the loader options (default: nnU-Net's nnUNetTrainer, default options)")
    p.add_argument("--recipe", metavar="NAME_OR_PATH",
                   help="take the loader options (and the checkpoint, if none is given) from this recipe's "
                        "pretrained section instead of the trainer's: the load the fine-tuning trainer will do")
    p.add_argument("-v", "--verbose", action="store_true", help="print the table of every tensor")
    add_load_flags(p, defaults_from="the recipe's pretrained section with --recipe, else the values shown")
    add_json_option(p)
    p.set_defaults(func=run)


def _not_found(trainer: str, e: TrainerNotFoundError) -> TrainerNotFoundError:
    return TrainerNotFoundError(f"-tr {trainer}: {e}; -tr names the trainer whose network is built (leave it out for "
                                "nnU-Net's nnUNetTrainer)", e.trainer)


def run(args: argparse.Namespace) -> int:
    from nnunet_transfer.core.loading.checkpoint import read_checkpoint
    from nnunet_transfer.core.loading.loader import plan_load
    from nnunet_transfer.core.schedules.recipes import load_recipe
    from nnunet_transfer.nnunet.datasets import find_target_dataset
    from nnunet_transfer.nnunet.networks import build_network, trainer_recipe

    try:
        recipe = load_recipe(args.recipe) if args.recipe else trainer_recipe(args.trainer) if args.trainer else None
    except TrainerNotFoundError as e:
        raise _not_found(args.trainer, e) from None
    options = load_options_from_args(args, recipe.pretrained.load_options() if recipe else None)
    checkpoint = args.checkpoint or (recipe.pretrained.checkpoint if recipe else None)
    if not checkpoint:
        where = f"recipe {recipe.name} ({recipe.source}) has no pretrained.checkpoint" if recipe else "no --recipe"
        raise TransferError(f"no checkpoint to check: give CHECKPOINT, or a --recipe whose pretrained.checkpoint "
                            f"names one ({where})")
    target = find_target_dataset(args.dataset, args.plans)
    source = read_checkpoint(checkpoint, container=options.container, allow_globals=options.allow_globals,
                             trust_checkpoint=options.trust_checkpoint)
    try:
        network = build_network(target.plans, args.configuration, target.dataset_json, trainer=args.trainer)
    except TrainerNotFoundError as e:
        raise _not_found(args.trainer, e) from None
    if recipe is not None and recipe.adapters is not None:  # the trainer's network: its adapters are reported new
        from nnunet_transfer.core.adapters import inject_adapters

        inject_adapters(network, recipe.adapters, recipe.groups)
    report, _ = plan_load(network, source, target.dataset_json.get("labels"), options)
    code = 0 if report.passed else 1
    if recipe is not None:
        of = "" if args.recipe else f" of trainer {args.trainer}"
        print(f"loader options from recipe {recipe.name}{of} ({recipe.source})")
    print(report.table() if args.verbose else report.summary())
    if code:
        print(f"FAIL: {report.mismatch + '. ' if report.mismatch else ''}coverage {report.coverage:.3f} below the "
              f"minimum {report.min_coverage}. Main reasons: " + "; ".join(report.main_reasons()), file=sys.stderr)
    write_json(args.json, report.to_dict())
    return code
