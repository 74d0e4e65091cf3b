"""The ``nnunet-transfer`` command line: inspect, check, doctor, demo.

Exit codes: 0 success (the load passes the guard), 1 the load would not pass the guard (or doctor found a
problem), 2 unusable input. Expected errors print one message, no traceback, and create no files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nnunet_transfer.errors import TransferError

__all__ = ["main"]


def _add_load_options(p: argparse.ArgumentParser, container: bool = True) -> None:
    if container:
        p.add_argument("--container", help="entry of the checkpoint that holds the weights (dotted for nested ones)")
    p.add_argument("--allow-global", action="append", default=[], metavar="NAME",
                   help="allow this global for safe (weights_only) loading; repeatable")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle without restrictions: only for files you trust (can run code)")
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON to PATH")


def _write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, target)


def _describe_plans(plans: dict[str, Any], configuration: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"plans_name": plans.get("plans_name"), "dataset_name": plans.get("dataset_name"),
                           "configurations": sorted(plans.get("configurations", {}))}
    conf = plans.get("configurations", {}).get(configuration or "", {})
    if conf:
        arch = conf.get("architecture", {})
        kwargs = arch.get("arch_kwargs", {})
        out.update({
            "configuration": configuration,
            "network": arch.get("network_class_name"),
            "patch_size": conf.get("patch_size"),
            "spacing": conf.get("spacing"),
            "features_per_stage": kwargs.get("features_per_stage"),
            "strides": kwargs.get("strides"),
            "kernel_sizes": kwargs.get("kernel_sizes"),
        })
    return out


def cmd_inspect(args: argparse.Namespace) -> int:
    from nnunet_transfer.checkpoint import read_checkpoint
    from nnunet_transfer.keys import strip_wrappers
    from nnunet_transfer.labels import head_channels

    ckpt = read_checkpoint(args.checkpoint, container=args.container, allow_globals=args.allow_global,
                           trust_checkpoint=args.trust_checkpoint)
    keys = list(ckpt.state_dict)
    wrapped = sum(strip_wrappers(k) != k for k in keys)
    firsts = Counter(strip_wrappers(k).split(".")[0] for k in keys)
    n_unique, nbytes = ckpt.unique_tensors()
    dtypes = Counter(str(t.dtype).replace("torch.", "") for t in ckpt.state_dict.values())
    info: dict[str, Any] = {
        "path": str(ckpt.path),
        "format": ckpt.format,
        "container": ckpt.container or "<plain state dict>",
        "keys": len(keys),
        "tensors": n_unique,
        "bytes": nbytes,
        "dtypes": dict(dtypes),
        "keys_with_wrapper_prefixes": wrapped,
        "top_level_prefixes": dict(firsts.most_common(10)),
        "trainer_name": ckpt.trainer_name,
        "epoch": ckpt.metadata.get("current_epoch"),
        "plans": _describe_plans(ckpt.plans, ckpt.configuration) if ckpt.plans else None,
        "labels": None,
    }
    if ckpt.dataset_json:
        ch = head_channels(ckpt.dataset_json.get("labels"))
        info["labels"] = {"names": list(ch.names), "regions": ch.regions} if ch else None
        info["channel_names"] = ckpt.dataset_json.get("channel_names")
    print(f"checkpoint:  {info['path']}")
    print(f"format:      {info['format']}   container: {info['container']}")
    print(f"tensors:     {n_unique} distinct ({len(keys)} keys), {nbytes / 2**20:.1f} MiB, dtypes {dict(dtypes)}")
    wrappers = f"; {wrapped} keys carry module./_orig_mod." if wrapped else ""
    print(f"prefixes:    {info['top_level_prefixes']}{wrappers}")
    if ckpt.trainer_name:
        print(f"trainer:     {ckpt.trainer_name} (epoch {info['epoch']})")
    if info["plans"]:
        p = info["plans"]
        print(f"plans:       {p['plans_name']} of {p['dataset_name']}, configuration {p.get('configuration')}: "
              f"{(p.get('network') or '').rsplit('.', 1)[-1]}, patch {p.get('patch_size')}, spacing {p.get('spacing')}")
    if info["labels"]:
        kind = "regions" if info["labels"]["regions"] else "labels"
        print(f"{kind}:      {info['labels']['names']}; input channels {info.get('channel_names')}")
    _write_json(args.json, info)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from nnunet_transfer.checkpoint import read_checkpoint
    from nnunet_transfer.keys import parse_rename_rule
    from nnunet_transfer.loader import LoadOptions, plan_load
    from nnunet_transfer.nnunet import build_network, find_target_dataset

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
    _write_json(args.json, report.to_dict())
    return code


def cmd_plans(args: argparse.Namespace) -> int:
    from nnunet_transfer.plans import (
        check_transfer,
        preprocess_transfer,
        read_source_plans,
        transfer_plans,
        write_plans,
    )

    source = read_source_plans(args.source, args.source_plans, args.allow_global, args.trust_checkpoint)
    transfer = transfer_plans(
        source, args.target, args.plans_identifier, args.configurations, intensity_stats=args.intensity_stats,
        patch_size=args.patch_size, spacing=args.spacing, overwrite=args.overwrite, dry_run=args.dry_run,
        num_processes=args.np,
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
    for conf, report in check_transfer(transfer, args.min_coverage):
        print(f"[{conf}] " + (report.table() if args.verbose else report.summary()))
        reports[conf] = report.to_dict()
        if not report.passed:
            code = 1
            print(f"FAIL [{conf}]: coverage {report.coverage:.3f} below {report.min_coverage}: "
                  + "; ".join(report.main_reasons()), file=sys.stderr)
    if not args.dry_run:
        print(f"fine-tune with: nnUNetv2_train {transfer.target_name} {transfer.configurations[0]} FOLD "
              f"-p {args.plans_identifier} -tr nnUNetTrainerAdaptiveFT"
              + (f" -pretrained_weights {source.description}" if source.checkpoint is not None else ""))
    _write_json(args.json, {"plans_file": str(transfer.plans_file), "dry_run": args.dry_run,
                            "diff": [{"path": p, "source": o, "new": n} for p, o, n in transfer.diffs],
                            "costs": transfer.costs, "notes": transfer.notes, "reports": reports})
    return code


def cmd_doctor(args: argparse.Namespace) -> int:
    from nnunet_transfer.doctor import run_doctor

    return run_doctor()


def cmd_demo(args: argparse.Namespace) -> int:
    from nnunet_transfer.demo import run_demo

    return run_demo(Path(args.workdir), force=args.force)


def build_parser() -> argparse.ArgumentParser:
    from nnunet_transfer._version import __version__

    parser = argparse.ArgumentParser(prog="nnunet-transfer", description="Transfer learning for nnU-Net v2.")
    parser.add_argument("--version", action="version", version=f"nnunet-transfer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="describe a checkpoint: format, container, prefixes, tensors, plans, labels")
    p.add_argument("checkpoint")
    _add_load_options(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("check", help="dry-run the adaptive load against the network a target dataset's plans build")
    p.add_argument("checkpoint")
    p.add_argument("-d", "--dataset", required=True, help="target dataset name or ID")
    p.add_argument("-c", "--configuration", required=True, help="nnU-Net configuration, e.g. 3d_fullres")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("--min-coverage", type=float, default=0.5, help="guard: minimum coverage (default 0.5)")
    p.add_argument("--rename", action="append", default=[], metavar="PATTERN=REPLACEMENT",
                   help="rename rule, the pattern matched against the whole key; repeatable")
    p.add_argument("-v", "--verbose", action="store_true", help="print the table of every tensor")
    _add_load_options(p)
    p.set_defaults(func=cmd_check)

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
    p.add_argument("--spacing", type=float, nargs="+", help="override the target spacing (mm)")
    p.add_argument("--overwrite", action="store_true", help="replace existing plans of that identifier (and data)")
    p.add_argument("--dry-run", action="store_true", help="show the plans diff and the check; write nothing")
    p.add_argument("--no-preprocess", action="store_true", help="write the plans but do not preprocess")
    p.add_argument("-np", type=int, default=2, help="processes for fingerprint extraction and preprocessing")
    p.add_argument("--min-coverage", type=float, default=0.5, help="guard of the check (default 0.5)")
    p.add_argument("-v", "--verbose", action="store_true", help="print the table of every tensor")
    _add_load_options(p, container=False)  # plans come from nnU-Net checkpoints: no container choice
    p.set_defaults(func=cmd_plans)

    p = sub.add_parser("doctor", help="check that the stock nnUNetv2_* commands find our trainers, and why not")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("demo", help="end to end on synthetic data: pretrain, fine-tune with the stock CLI, report")
    p.add_argument("--workdir", default="nnunet_transfer_demo", help="folder for data and results (created)")
    p.add_argument("--force", action="store_true", help="delete a previous demo in --workdir first")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nnunet-transfer``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except TransferError as e:
        print(f"nnunet-transfer {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
