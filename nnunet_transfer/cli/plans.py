"""``nnunet-transfer plans``: plans transfer, preprocessing and the check."""

from __future__ import annotations

import argparse
import sys

from nnunet_transfer.cli._common import add_json_option, add_load_flags, load_options_from_args, write_json

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plans", help="make target plans that build the pretrained network, preprocess, check")
    p.add_argument("--from", dest="source", required=True, metavar="CHECKPOINT_OR_SOURCE",
                   help="pretrained nnU-Net checkpoint, source plans JSON file, or source dataset name/ID")
    p.add_argument("-t", "--target", required=True, help="target dataset name or ID (raw data needed)")
    p.add_argument("-tp", "--plans-identifier", required=True, help="identifier of the new plans, e.g. nnUNetPlans_ft")
    p.add_argument("-c", "--configurations", nargs="+", default=None,
                   help="configurations to transfer (default: the checkpoint's, or all of the source plans)")
    p.add_argument("-sp", "--source-plans", default="nnUNetPlans", help="plans identifier of a source dataset")
    p.add_argument("--intensity-stats", choices=["target", "source"], default="target",
                   help="intensity statistics for CT normalisation: the target's (default) or the source's")
    p.add_argument("--patch-size", type=int, nargs="+", help="override the patch size (must fit the network)")
    p.add_argument("--spacing", nargs="+", metavar="MM|pretrain|target",
                   help="the spacing of the new plans: values in mm, 'pretrain' (the source's, the default) or "
                        "'target' (nnU-Net's own full-resolution spacing for the target)")
    p.add_argument("--batch-size", type=int, help="override the batch size (nnssl checkpoints: default 2)")
    p.add_argument("--overwrite", action="store_true", help="replace existing plans of that identifier (and data)")
    p.add_argument("--dry-run", action="store_true", help="show the plans diff and the check; write nothing")
    p.add_argument("--no-preprocess", action="store_true", help="write the plans but do not preprocess")
    p.add_argument("-np", type=int, default=2, help="processes for fingerprint extraction and preprocessing")
    p.add_argument("-v", "--verbose", action="store_true", help="print the table of every tensor")
    # plans come from nnU-Net checkpoints: no container choice; the check is the default load
    add_load_flags(p, ("min_coverage", "allow_globals", "trust_checkpoint"))
    add_json_option(p)
    p.set_defaults(func=run)


def _spacing(values: list[str] | None) -> list[float] | str | None:
    from nnunet_transfer.errors import TransferError

    if values is None:
        return None
    if len(values) == 1 and values[0] in ("pretrain", "source", "target"):
        return values[0]
    try:
        return [float(v) for v in values]
    except ValueError:
        raise TransferError(f"--spacing {' '.join(values)}: give 'pretrain', 'target' or values in mm") from None


def _trainer_for(source: object) -> str:
    """The trainer to suggest: for nnssl checkpoints the variant with that family's recipe."""
    ckpt = getattr(source, "checkpoint", None)
    nnssl = getattr(ckpt, "nnssl", None)
    if nnssl is None:
        return "nnUNetTrainerAdaptiveFT"
    name = str(nnssl.architecture.get("network_class_name", ""))
    return "nnUNetTrainerAdaptiveFT_nnsslPrimus" if "primus" in name.lower() else "nnUNetTrainerAdaptiveFT_nnsslResEnc"


def run(args: argparse.Namespace) -> int:
    from nnunet_transfer import trainers
    from nnunet_transfer.nnunet.networks import trainer_recipe
    from nnunet_transfer.nnunet.plans import (
        check_transfer,
        preprocess_transfer,
        read_source_plans,
        transfer_plans,
        write_plans,
    )

    read_opts = load_options_from_args(args)
    spacing = _spacing(args.spacing)
    source = read_source_plans(args.source, args.source_plans, read_opts.allow_globals, read_opts.trust_checkpoint)
    # the check is the load of the trainer suggested below: its recipe's pretrained section, flags on top
    suggested = _trainer_for(source)
    recipe = trainer_recipe(getattr(trainers, suggested))
    opts = load_options_from_args(args, recipe.pretrained.load_options() if recipe is not None else None)
    trainer = None
    if source.trainer is not None:  # nnssl: our trainer builds the network (a Primus has no deep supervision)
        from nnunet_transfer.trainers.adaptive_ft import nnUNetTrainerAdaptiveFT

        trainer = nnUNetTrainerAdaptiveFT
    transfer = transfer_plans(
        source, args.target, args.plans_identifier, args.configurations, intensity_stats=args.intensity_stats,
        patch_size=args.patch_size, spacing=spacing, batch_size=args.batch_size, overwrite=args.overwrite,
        dry_run=args.dry_run, num_processes=args.np, trainer=trainer,
    )
    print(transfer.describe())
    if args.dry_run:
        print("dry run: nothing written")
    else:
        path = write_plans(transfer, overwrite=args.overwrite)
        print(f"wrote {path}")
        if not args.no_preprocess:
            preprocess_transfer(transfer, args.np)
            print(f"preprocessed {transfer.target_name} with {args.plans_identifier}: {transfer.configurations}")
    code = 0
    reports = {}
    if recipe is not None:
        print(f"check: loader options from recipe {recipe.name} of trainer {suggested} ({recipe.source})")
    for conf, report in check_transfer(transfer, trainer=trainer, options=opts):
        print(f"[{conf}] " + (report.table() if args.verbose else report.summary()))
        reports[conf] = report.to_dict()
        if not report.passed:
            code = 1
            print(f"FAIL [{conf}]: {report.mismatch + '. ' if report.mismatch else ''}coverage "
                  f"{report.coverage:.3f} below {report.min_coverage}: " + "; ".join(report.main_reasons()),
                  file=sys.stderr)
    if not args.dry_run:
        print(f"fine-tune with: nnUNetv2_train {transfer.target_name} {transfer.configurations[0]} FOLD "
              f"-p {args.plans_identifier} -tr {suggested}"
              + (f" -pretrained_weights {source.checkpoint.path}" if source.checkpoint is not None else ""))
    write_json(args.json, {"plans_file": str(transfer.plans_file), "dry_run": args.dry_run,
                            "diff": [{"path": p, "source": o, "new": n} for p, o, n in transfer.diffs],
                            "costs": transfer.costs, "notes": transfer.notes, "reports": reports})
    return code
