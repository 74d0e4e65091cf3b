"""``nnunet-transfer inspect``: what a checkpoint holds (format, container, prefixes, tensors, plans, labels; for nnssl
checkpoints the adaptation plan: architecture, pretraining spacing and patch, recommended patch, keys, citations)."""

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


def _citation(entry: Any) -> str:
    if isinstance(entry, dict):
        parts = [str(entry[k]) for k in ("title", "author", "authors", "year", "doi", "url") if entry.get(k)]
        if parts:
            return ", ".join(parts)
        entry = next(iter(entry.values()), entry) if len(entry) == 1 else entry
    text = " ".join(str(entry).split())
    return text if len(text) <= 160 else text[:157] + "..."


def _print_nnssl(n: dict[str, Any]) -> None:
    print(f"nnssl:       {n['form']} form, adaptation plan {n['adaptation_plan']}")
    print(f"  architecture:  {n['architecture']} ({n['network_class_name']})")
    print(f"  pretraining:   configuration {n['pretrain_configuration']}, spacing {n['pretrain_spacing']}, patch "
          f"{n['pretrain_patch_size']}, {n['pretrain_num_input_channels']} input channel(s)")
    print(f"  downstream:    recommended patch {n['recommended_downstream_patchsize']}")
    print(f"  keys:          stem {n['key_to_stem']!r}, encoder {n['key_to_encoder']!r}, input projection "
          f"{n['keys_to_in_proj']}, positional embedding {n['key_to_lpe']!r}")
    if n.get("pos_embed_grid"):
        print(f"  pos. embed.:   {n['pos_embed_grid']}")
    if n.get("token_order"):
        flat = "(h w d), nnssl's EvaMAE" if n["token_order"] == "hwd" else "(w h d), as dynamic_network_architectures"
        print(f"  token order:   {n['token_order']}: tokens flattened {flat} (trainer {n.get('trainer_name')})")
    for i, c in enumerate(n["citations"]):
        print(f"  citation {i + 1}:    {_citation(c)}")


def _pos_embed_grid(ckpt: Any) -> str | None:
    """The token grid of an nnssl checkpoint's positional embedding, read from the tensor."""
    from nnunet_transfer.core.loading.adapt import infer_token_grid

    lpe = ckpt.nnssl.plan.key_to_lpe
    tensor = ckpt.state_dict.get(lpe) if lpe else None
    if tensor is None or tensor.ndim != 3:
        return None
    grid = infer_token_grid(tensor.shape[1])
    shown = "x".join(map(str, grid)) if grid else "not a cube: give the grid"
    return f"{tensor.shape[1]} tokens of width {tensor.shape[2]} (grid {shown})"


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
        "nnssl": ckpt.nnssl.describe() if ckpt.nnssl is not None else None,
    }
    if info["nnssl"] is not None:
        info["nnssl"]["pos_embed_grid"] = _pos_embed_grid(ckpt)
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
        epoch = f" (epoch {info['epoch']})" if info["epoch"] is not None else ""
        print(f"trainer:     {ckpt.trainer_name}{epoch}")
    if info["plans"]:
        p = info["plans"]
        print(f"plans:       {p['plans_name']} of {p['dataset_name']}, configuration {p.get('configuration')}: "
              f"{(p.get('network') or '').rsplit('.', 1)[-1]}, patch {p.get('patch_size')}, spacing {p.get('spacing')}")
    if info["labels"]:
        kind = "regions" if info["labels"]["regions"] else "labels"
        print(f"{kind}:      {info['labels']['names']}; input channels {info.get('channel_names')}")
    if info["nnssl"]:
        _print_nnssl(info["nnssl"])
    write_json(args.json, info)
    return 0
