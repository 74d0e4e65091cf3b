"""``nnunet-transfer inspect``: what a checkpoint holds (format, container, prefixes, tensors, plans, labels)."""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from nnunet_transfer.cli._common import READ_FIELDS, add_json_option, add_load_flags, load_options_from_args, write_json

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="describe a checkpoint: format, container, prefixes, tensors, plans, labels")
    p.add_argument("checkpoint")
    add_load_flags(p, READ_FIELDS)
    add_json_option(p)
    p.set_defaults(func=run)


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


def run(args: argparse.Namespace) -> int:
    from nnunet_transfer.core.loading.checkpoint import read_checkpoint
    from nnunet_transfer.core.loading.heads import head_channels
    from nnunet_transfer.core.loading.keys import strip_wrappers

    opts = load_options_from_args(args)
    ckpt = read_checkpoint(args.checkpoint, container=opts.container, allow_globals=opts.allow_globals,
                           trust_checkpoint=opts.trust_checkpoint)
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
    write_json(args.json, info)
    return 0
