"""One base, many adapters: a LoRA fold as peft's files, and back to a full nnU-Net checkpoint.

:func:`extract_adapters` writes fold ``F`` of a model folder trained with LoRA (``nnUNetTrainerAdaptiveFT_LoRA``) in
peft's format (``adapter_config.json`` + ``adapter_model.safetensors``, :func:`~nnunet_transfer.core.adapters.
save_adapters`): the adapters, and the fold's other trained tensors (decoder, heads, norms), not the pretrained weights
of the adapted layers, which stay in the one base checkpoint; the header records that checkpoint's SHA-256, the plans
(with the recipe), the dataset's labels and what nnU-Net's predictor reads from a checkpoint.

:func:`apply_adapters` rebuilds the fold from the base checkpoint and such a folder: the adapted network built from the
plans, the base loaded as the training loaded it (the recipe's ``pretrained`` options), the folder's tensors on top,
the adapters merged: a full checkpoint of nnU-Net's own trainer (``nnUNetTrainer``) whose network equals the fold's
merged network. A base checkpoint whose SHA-256 differs is refused before anything is read from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from nnunet_transfer.core.adapters import (
    ADAPTER_WEIGHTS,
    BASE_RECORD,
    fold_metadata,
    from_base,
    inject_adapters,
    is_adapter_key,
    merge_lora_weights,
    read_adapters,
    save_adapters,
)
from nnunet_transfer.core.io import atomic_path, read_json_object, sha256_file
from nnunet_transfer.core.loading.loader import load_pretrained
from nnunet_transfer.core.loading.report import REPORT_FILE
from nnunet_transfer.core.schedules.recipes import Recipe, recipe_in_plans
from nnunet_transfer.errors import AdapterError, ExportError
from nnunet_transfer.nnunet.model_folder import DEFAULT_CHECKPOINT, read_fold_checkpoint, read_model_folder
from nnunet_transfer.nnunet.networks import build_network

__all__ = ["apply_adapters", "extract_adapters"]


def _recipe(plans: dict[str, Any], where: object) -> Recipe:
    recipe = recipe_in_plans(plans, str(where))
    if recipe is None or recipe.adapters is None:
        raise AdapterError(f"{where}: the plans name no recipe with adapters: this model was not trained with LoRA "
                           "(nnUNetTrainerAdaptiveFT_LoRA)")
    return recipe


def extract_adapters(model_folder: str | os.PathLike, fold: int | str, out: str | os.PathLike, *,
                     checkpoint_name: str = DEFAULT_CHECKPOINT) -> Path:
    """``nnunet-transfer adapters extract``: fold ``fold`` of a LoRA model folder as peft's files in ``out``."""
    folder = read_model_folder(model_folder)
    recipe = _recipe(folder.plans, folder.path / "plans.json")
    ckpt = read_fold_checkpoint(folder, fold, checkpoint_name)
    if not any(is_adapter_key(k) for k in ckpt.state_dict):
        raise AdapterError(f"{ckpt.path}: holds no LoRA adapter tensors")
    fold_dir = ckpt.path.parent
    base = read_json_object(fold_dir / BASE_RECORD, "adapter base record", AdapterError) \
        if (fold_dir / BASE_RECORD).is_file() else None
    if base is None:
        raise AdapterError(f"{fold_dir / BASE_RECORD}: not found, so the base checkpoint of this fold is unknown "
                           "(it is written when the training loads its pretrained weights)")
    report = read_json_object(fold_dir / REPORT_FILE, "load report", AdapterError) \
        if (fold_dir / REPORT_FILE).is_file() else None
    keys = from_base(ckpt.state_dict, report)
    metadata = fold_metadata(folder.plans, folder.configuration, ckpt.fold, folder.dataset_json, ckpt.trainer_name,
                             ckpt.epoch, ckpt.mirroring_axes, base, keys)
    out = Path(out)
    if (out / ADAPTER_WEIGHTS).exists():
        raise ExportError(f"{out / ADAPTER_WEIGHTS}: exists; give another -o")
    return save_adapters(out, ckpt.state_dict, recipe.adapters, keys, metadata)


def apply_adapters(base_checkpoint: str | os.PathLike, adapter_folder: str | os.PathLike,
                   out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """``nnunet-transfer adapters apply``: the full nnU-Net checkpoint (``nnUNetTrainer``'s, adapters merged) of
    the fold in ``adapter_folder``, rebuilt on ``base_checkpoint``. Raises
    :class:`~nnunet_transfer.errors.AdapterError` for a base of another SHA-256 or one that does not give every
    pretrained weight the fold took from its base; nothing is written then."""
    from nnunet_transfer.export.share import clean_plans, stock_trainer_for

    base_checkpoint, out = Path(base_checkpoint), Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out}: exists; give --overwrite to replace it")
    tensors, meta = read_adapters(adapter_folder)
    if not base_checkpoint.is_file():
        raise AdapterError(f"{base_checkpoint}: no such file")
    want, got = meta.get("base_checkpoint_sha256"), sha256_file(base_checkpoint)
    if want != got:
        raise AdapterError(f"{base_checkpoint}: SHA-256 {got[:16]}... is not that of the base checkpoint these "
                           f"adapters were trained on ({str(want)[:16]}..., {meta.get('base_checkpoint')}): refused")
    plans, configuration, dataset_json = meta["plans"], meta["configuration"], meta["dataset_json"]
    recipe = _recipe(plans, Path(adapter_folder) / ADAPTER_WEIGHTS)
    with torch.device("cpu"):
        network = build_network(plans, configuration, dataset_json)
    inject_adapters(network, recipe.adapters, recipe.groups)
    report = load_pretrained(network, base_checkpoint, dataset_json.get("labels"), recipe.pretrained.load_options())
    given = from_base(network.state_dict(), report.to_dict())
    lacking = sorted(set(meta["from_base"]) - given)
    if lacking:
        raise AdapterError(f"{base_checkpoint}: does not give {len(lacking)} pretrained weights the fold took from "
                           f"its base (first: {lacking[0]}); another architecture: refused")
    state = network.state_dict(keep_vars=True)
    unexpected = sorted(set(tensors) - set(state))
    if unexpected:
        raise AdapterError(f"{adapter_folder}: {len(unexpected)} tensors are not in the network the plans build "
                           f"(first: {unexpected[0]}): refused")
    covered = {id(state[k]) for k in (*tensors, *given)}
    uncovered = [k for k, v in state.items() if id(v) not in covered]
    if uncovered:
        raise AdapterError(f"{adapter_folder}: tensor {uncovered[0]} comes neither from the adapter file nor from "
                           "the base checkpoint: refused")
    with torch.no_grad():
        for key, value in tensors.items():
            state[key].copy_(value)
    trainer = stock_trainer_for(meta["trainer_name"])
    weights = merge_lora_weights(network.state_dict(), recipe.adapters)
    checkpoint = {
        "network_weights": weights, "optimizer_state": None, "grad_scaler_state": None, "logging": {},
        "_best_ema": None, "current_epoch": meta.get("current_epoch"),
        "init_args": {"plans": clean_plans(plans)[0], "configuration": configuration,
                      "fold": int(meta["fold"]) if str(meta["fold"]).isdigit() else meta["fold"],
                      "dataset_json": dataset_json},
        "trainer_name": trainer.__name__,
    }
    if meta.get("inference_allowed_mirroring_axes") is not None:
        checkpoint["inference_allowed_mirroring_axes"] = tuple(meta["inference_allowed_mirroring_axes"])
    with atomic_path(out) as tmp:
        torch.save(checkpoint, tmp)
    return out
