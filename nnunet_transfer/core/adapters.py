"""LoRA adapters on nnU-Net's networks, through Hugging Face ``peft`` (an optional extra, imported when first used).

A recipe's ``adapters:`` section (:class:`~nnunet_transfer.core.schedules.recipes.Adapters`) names parameter groups
(the groups the architecture registry declares, or the recipe's own). :func:`inject_adapters` wraps, in place, every
convolution (``nn.Conv1d/2d/3d``, not transposed) and linear layer whose weight belongs to a targeted group in peft's
LoRA layer; the wrapper replaces the layer under every name the network reaches it by (nnU-Net's
``convs.0.conv`` is also ``convs.0.all_modules.0``), so the forward pass goes through it. peft initialises the
up-projection to zero: the adapted network computes exactly what the base network computes until the adapters train.

Transposed convolutions (peft has no LoRA layer for them) get none: in a targeted group they stay frozen at their
pretrained values; in the decoder (untargeted by the shipped recipes) they train fully. Linear layers whose weight a
module reads directly instead of calling the layer (timm's fused ``qkv`` with separate q/v biases) get none either
(an adapter there would be bypassed).

In the fine-tuning engine the adapter tensors belong to the group of the layer they adapt; the pretrained weights of a
targeted group are *fixed* (:func:`split_fixed`): never in the optimizer, never trained. :func:`merge_adapters` folds
the adapters into the weights and removes the wrappers: a plain nnU-Net network.

Checkpoint keys: a wrapped layer's weight is ``x.base_layer.weight`` in the network, ``x.weight`` in a plain network's
checkpoint (:func:`plain_key`); adapter tensors are ``x.lora_A.default.weight`` (:func:`is_adapter_key`), and in
peft's files ``x.lora_A.weight`` (:func:`to_peft_key`, :func:`from_peft_key`).
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunet_transfer.core.io import atomic_path
from nnunet_transfer.core.modules import unwrap_network
from nnunet_transfer.errors import AdapterError, PeftMissingError, RecipeError

if TYPE_CHECKING:
    from nnunet_transfer.core.schedules.groups import ParameterGroup
    from nnunet_transfer.core.schedules.recipes import Adapters

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_FOLDER",
    "ADAPTER_NAME",
    "ADAPTER_WEIGHTS",
    "BASE_RECORD",
    "PEFT_INSTALL",
    "adapter_layers",
    "adapter_targets",
    "delta_weight",
    "fold_metadata",
    "from_base",
    "from_peft_key",
    "has_adapters",
    "inject_adapters",
    "is_adapter_key",
    "merge_adapters",
    "merge_lora_weights",
    "merge_trained_adapters",
    "plain_key",
    "read_adapters",
    "require_peft",
    "save_adapters",
    "split_fixed",
    "to_peft_key",
]

ADAPTER_NAME = "default"  # peft's adapter name (one adapter per network)
PEFT_INSTALL = "pip install nnunet-transfer[peft]"
_ADAPTER_SEGMENT = re.compile(r"(?:^|\.)lora_(?:A|B|dropout|embedding_A|embedding_B|magnitude_vector)(?:\.|$)")
_BASE_LAYER = ".base_layer."
_PEFT_ADAPTER = re.compile(rf"\.(lora_[A-Za-z_]+)\.{ADAPTER_NAME}(?=\.|$)")
_PEFT_FILE = re.compile(r"\.(lora_[A-Za-z_]+)(?=\.)")
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def require_peft(what: str = "LoRA adapters") -> ModuleType:
    """The ``peft`` module, or :class:`~nnunet_transfer.errors.PeftMissingError` (one line naming the extra)."""
    try:
        return importlib.import_module("peft")
    except ImportError:
        raise PeftMissingError(f"{what} need Hugging Face peft, which is not installed: {PEFT_INSTALL}") from None


def is_adapter_key(key: str) -> bool:
    """Whether a parameter / state-dict name is an adapter tensor (``...lora_A.default.weight``)."""
    return bool(_ADAPTER_SEGMENT.search(key))


def plain_key(key: str) -> str:
    """The name a tensor of a wrapped layer has in a plain network: ``x.base_layer.weight`` -> ``x.weight``."""
    return key.replace(_BASE_LAYER, ".")


def to_peft_key(key: str) -> str:
    """A network's adapter tensor name as peft's files write it (``x.lora_A.default.weight`` -> ``x.lora_A.weight``);
    any other name unchanged."""
    return _PEFT_ADAPTER.sub(r".\1", key)


def from_peft_key(key: str) -> str:
    """The inverse of :func:`to_peft_key` for an adapter tensor name of a peft file."""
    return _PEFT_FILE.sub(rf".\1.{ADAPTER_NAME}", key) if is_adapter_key(key) else key


def adapter_layers(network: nn.Module) -> dict[str, nn.Module]:
    """The peft LoRA layers of ``network`` (unwrapped), by their first name."""
    return {n: m for n, m in unwrap_network(network).named_modules()
            if hasattr(m, "base_layer") and hasattr(m, "lora_A")}


def has_adapters(network: nn.Module) -> bool:
    """Whether ``network`` holds peft LoRA layers."""
    return bool(adapter_layers(network))


def _bypassed(module: nn.Module, parent: nn.Module | None, child: str) -> bool:
    """A linear layer whose weight its owner reads directly instead of calling it: timm's EVA attention computes
    ``F.linear(x, qkv.weight, cat(q_bias, k_bias, v_bias))`` unless ``qkv_bias_separate``."""
    return (child == "qkv" and parent is not None and getattr(parent, "q_bias", None) is not None
            and not getattr(parent, "qkv_bias_separate", False))


def adapter_targets(network: nn.Module, adapters: Adapters, patterns: dict[str, list[str]] | None = None
                    ) -> list[str]:
    """Module names (first name of each) of the layers that get adapters: the convolutions (not transposed) and
    linear layers whose weight is in a group that ``adapters.targets`` selects (groups: the recipe's ``patterns``,
    else the architecture's). Raises :class:`~nnunet_transfer.errors.RecipeError` for a target that selects no group
    or groups without such a layer."""
    from nnunet_transfer.core.schedules.groups import derive_groups, select_groups

    module = unwrap_network(network)
    groups = derive_groups(module, patterns)
    targeted = set(select_groups(adapters.targets, [g.name for g in groups], "adapters.targets"))
    group_of = {id(p): g.name for g in groups for p in g.params}
    modules = dict(module.named_modules())
    names = []
    for name, m in modules.items():
        if type(m) not in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear) or group_of.get(id(m.weight)) not in targeted:
            continue
        parent_name, _, child = name.rpartition(".")
        if not _bypassed(m, modules.get(parent_name), child):
            names.append(name)
    if not names:
        raise RecipeError(f"adapters.targets {adapters.targets}: the selected groups {sorted(targeted)} hold no "
                          "convolution or linear layer to adapt")
    return names


def inject_adapters(network: nn.Module, adapters: Adapters, patterns: dict[str, list[str]] | None = None
                    ) -> list[str]:
    """Wrap the layers of :func:`adapter_targets` in peft's LoRA layers, in place (every alias of a layer then
    reaches its wrapper). Returns the module names adapted. Raises
    :class:`~nnunet_transfer.errors.PeftMissingError` without peft, :class:`~nnunet_transfer.errors.AdapterError`
    when the network already holds adapters."""
    peft = require_peft()
    module = unwrap_network(network)
    if has_adapters(module):
        raise AdapterError(f"{type(module).__name__} already holds LoRA adapters; build a fresh network")
    names = adapter_targets(module, adapters, patterns)
    config = peft.LoraConfig(r=adapters.rank, lora_alpha=adapters.alpha, lora_dropout=adapters.dropout,
                             target_modules="|".join(re.escape(n) for n in names), bias="none",
                             init_lora_weights=True)
    originals = {id(module.get_submodule(n)): n for n in names}
    flags = {id(p): p.requires_grad for p in module.parameters()}
    peft.inject_adapter_in_model(config, module, adapter_name=ADAPTER_NAME)
    wrappers = {id(layer.get_base_layer()): layer for layer in adapter_layers(module).values()}
    if set(wrappers) != set(originals):
        raise AdapterError(f"peft adapted other layers than the {len(names)} selected ({len(wrappers)} adapted)")
    # aliases (all_modules.0 beside conv) still reach the plain layer: point them at its wrapper
    for parent in list(module.modules()):
        for child_name, child in list(parent._modules.items()):
            wrapper = wrappers.get(id(child))
            if wrapper is not None and parent is not wrapper:
                setattr(parent, child_name, wrapper)
    for p in module.parameters():  # peft froze everything but the adapters; the caller's engine decides that
        p.requires_grad_(flags.get(id(p), True))
    return names


def _delta(a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """``scaling * B @ A`` in the shape of the adapted weight: ``B @ A`` for a linear layer; for a convolution the
    composition of ``A`` (the layer's kernel) and ``B`` (1x1), for any kernel."""
    if a.ndim == 2:
        return (b @ a) * scaling
    conv = (F.conv1d, F.conv2d, F.conv3d)[a.ndim - 3]
    return conv(a.transpose(0, 1), b).transpose(0, 1) * scaling


def delta_weight(layer: nn.Module) -> torch.Tensor:
    """The update a peft LoRA layer adds to its base layer's weight (``scale * B @ A``, in that weight's shape).

    Computed here rather than by peft's ``get_delta_weight``, which takes a 3d kernel whose first two sizes are 1
    (``1x1x1``, ``1x1x3``) for a 2d 1x1 kernel and fails or gives a wrong update (peft 0.21)."""
    base = layer.get_base_layer()
    if isinstance(base, _ConvNd) and base.groups != 1:
        raise AdapterError(f"LoRA on a grouped convolution ({base}) cannot be merged here")
    return _delta(layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight, layer.scaling[ADAPTER_NAME])


def merge_lora_weights(state_dict: Mapping[str, torch.Tensor], adapters: Adapters) -> dict[str, torch.Tensor]:
    """A LoRA network's state dict (``x.base_layer.weight``, ``x.lora_A.default.weight`` ...) as the plain network's:
    each adapted weight merged (``W + alpha / rank * B @ A``, as :func:`merge_adapters` computes it), the adapter
    tensors dropped, ``base_layer`` removed from the names. Needs no peft. Raises
    :class:`~nnunet_transfer.errors.AdapterError` for an adapter without its base weight."""
    suffix_a = f".lora_A.{ADAPTER_NAME}.weight"
    scaling = adapters.alpha / adapters.rank
    merged: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(suffix_a):
            prefix = key[: -len(suffix_a)]
            base = state_dict.get(f"{prefix}.base_layer.weight")
            b = state_dict.get(f"{prefix}.lora_B.{ADAPTER_NAME}.weight")
            if base is None or b is None:
                raise AdapterError(f"adapter {key}: no {prefix}.base_layer.weight or lora_B beside it")
            with torch.no_grad():
                merged[f"{prefix}.weight"] = base + _delta(value.to(base.dtype), b.to(base.dtype), scaling)
    out = {}
    for key, value in state_dict.items():
        if is_adapter_key(key):
            continue
        plain = plain_key(key)
        out[plain] = merged.get(plain, value)
    return out


def merge_trained_adapters(state_dict: Mapping[str, torch.Tensor], plans: Any, where: object
                           ) -> dict[str, torch.Tensor]:
    """A LoRA fold's weights as the plain network's (:func:`merge_lora_weights`), with the rank and alpha of the
    recipe its plans hold (``plans[RECIPE_PLANS_KEY]``, as the trainer writes them). Weights without adapter tensors
    come back as they are. :class:`~nnunet_transfer.errors.AdapterError` naming ``where`` when the weights hold
    adapters but the plans name no recipe with adapters."""
    from nnunet_transfer.core.schedules.recipes import RECIPE_PLANS_KEY, adapters_in_plans

    if not any(is_adapter_key(k) for k in state_dict):
        return dict(state_dict)
    adapters = adapters_in_plans(plans, str(where))
    if adapters is None:
        raise AdapterError(f"{where}: holds LoRA adapter tensors, but its plans name no recipe with adapters "
                           f"({RECIPE_PLANS_KEY}.adapters: their rank and alpha): cannot merge them")
    return merge_lora_weights(state_dict, adapters)


def merge_adapters(network: nn.Module) -> int:
    """Fold every adapter into its layer's weight (``W + scale * B @ A``) and put the plain layer back under every
    name: the network becomes a plain nnU-Net network. Returns the number of layers merged."""
    module = unwrap_network(network)
    layers = {id(m): m for m in adapter_layers(module).values()}
    with torch.no_grad():
        for layer in layers.values():
            base = layer.get_base_layer()
            base.weight += delta_weight(layer).to(base.weight.dtype)
    for parent in list(module.modules()):
        for child_name, child in list(parent._modules.items()):
            if id(child) in layers:
                setattr(parent, child_name, child.get_base_layer())
    if hasattr(module, "peft_config"):
        del module.peft_config
    return len(layers)


def split_fixed(module: nn.Module, groups: Sequence[ParameterGroup], adapters: Adapters) -> list[str]:
    """Move the pretrained tensors of the targeted groups that never train out of each group's ``params`` into its
    ``fixed`` (``requires_grad`` off for good): everything but the adapters and, with ``train_norms``, the norm scales
    and shifts and the biases. Returns the targeted group names. Raises RecipeError when the network holds no
    adapters in the targeted groups."""
    from nnunet_transfer.core.schedules.groups import select_groups

    targeted = select_groups(adapters.targets, [g.name for g in groups], "adapters.targets")
    norm_params = {id(p) for m in module.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
    found = 0
    for g in groups:
        if g.name not in targeted:
            continue
        keep_names, keep = [], []
        for name, p in zip(g.names, g.params, strict=True):
            if is_adapter_key(name):
                found += 1
            if is_adapter_key(name) or (adapters.train_norms and (id(p) in norm_params or name.endswith(".bias"))):
                keep_names.append(name)
                keep.append(p)
            else:
                g.fixed_names.append(name)
                g.fixed.append(p)
                p.requires_grad_(False)
        g.names, g.params = keep_names, keep
    if not found:
        raise RecipeError(f"the recipe has adapters on {targeted}, but the network holds no adapter layers there: "
                          "build it with nnunet_transfer.core.adapters.inject_adapters (a LoRA trainer does)")
    return targeted



# --- adapter files (peft's format) ----------------------------------------------------------------------------------
ADAPTER_CONFIG = "adapter_config.json"  # peft's LoraConfig
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's adapter file; here with the fold's other trained tensors
ADAPTER_FOLDER = "adapters"  # in a fold folder: the fold's adapters, written at the end of training
BASE_RECORD = "adapter_base.json"  # in a fold folder: the pretrained checkpoint (path, SHA-256) the run started from


def from_base(state_dict: Mapping[str, torch.Tensor], report: Mapping[str, Any] | None) -> set[str]:
    """The pretrained weights of adapted layers (``x.base_layer.weight``, every alias) that the load ``report``
    (a :class:`~nnunet_transfer.core.loading.report.LoadReport`'s JSON form) says came from the checkpoint: an
    adapter file leaves them out, ``apply`` loads them from the base checkpoint again."""
    if not report:
        return set()
    loaded = {n for r in report.get("tensors", []) if r.get("status") in ("loaded", "adapted")
              for n in (r["key"], *r.get("aliases", []))}
    return {k for k in state_dict if k.endswith(f"{_BASE_LAYER}weight") and k in loaded}


def fold_metadata(plans: dict[str, Any], configuration: str, fold: str, dataset_json: dict[str, Any],
                  trainer_name: str, epoch: int | None, mirroring_axes: list[int] | None,
                  base: dict[str, Any] | None, base_keys: set[str]) -> dict[str, Any]:
    """What an adapter file's header records: the base checkpoint (path, SHA-256), the plans with the recipe, the
    configuration, fold, labels, trainer, epoch and mirroring axes of the fold, and the keys taken from the base."""
    return {"base_checkpoint": (base or {}).get("checkpoint"), "base_checkpoint_sha256": (base or {}).get("sha256"),
            "plans": plans, "configuration": configuration, "fold": fold, "dataset_json": dataset_json,
            "trainer_name": trainer_name, "current_epoch": epoch, "inference_allowed_mirroring_axes": mirroring_axes,
            "from_base": sorted(base_keys)}


def save_adapters(out: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], adapters: Adapters,
                  base_keys: set[str], metadata: Mapping[str, Any]) -> Path:
    """Write a LoRA fold in peft's format into the folder ``out``: ``adapter_config.json`` (peft's ``LoraConfig``:
    rank, alpha, dropout, the adapted modules) and ``adapter_model.safetensors``: the adapters under peft's names
    (``x.lora_A.weight``) and every other tensor of the fold (decoder, heads, norms; each tensor once) under the
    network's names, except ``base_keys`` (the pretrained weights, taken from the base checkpoint again). ``metadata``
    (the base checkpoint's SHA-256, the plans, ...) goes into the safetensors header as JSON strings. Returns ``out``.
    """
    peft = require_peft("adapter files")
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    for key, value in state_dict.items():
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        if key in base_keys or (value.numel() and ident in seen):
            continue
        seen.add(ident)
        tensors[to_peft_key(key)] = value.detach().to("cpu").contiguous().clone()
    suffix = f".lora_A.{ADAPTER_NAME}.weight"
    modules = sorted({k[: -len(suffix)] for k in state_dict if k.endswith(suffix)})
    if not modules:
        raise AdapterError("the state dict holds no LoRA adapters: nothing to write")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = peft.LoraConfig(r=adapters.rank, lora_alpha=adapters.alpha, lora_dropout=adapters.dropout,
                             target_modules=modules, bias="none")
    config.save_pretrained(str(out))
    header = {"format": "pt", **{k: json.dumps(v) for k, v in metadata.items()}}
    with atomic_path(out / ADAPTER_WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return out


def read_adapters(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors (under the network's names) and the metadata of a folder :func:`save_adapters` wrote. Raises
    :class:`~nnunet_transfer.errors.AdapterError` naming the folder when it is not one."""
    require_peft("adapter files")
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    missing = [n for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if not (folder / n).is_file()]
    if missing:
        raise AdapterError(f"{folder}: not an adapter folder ({', '.join(missing)} missing); write one with "
                           "nnunet-transfer adapters extract")
    try:
        with safe_open(str(folder / ADAPTER_WEIGHTS), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {from_peft_key(k): f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
        metadata = {k: json.loads(v) for k, v in header.items() if k != "format"}
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{folder / ADAPTER_WEIGHTS}: cannot be read ({e})") from None
    return tensors, metadata
