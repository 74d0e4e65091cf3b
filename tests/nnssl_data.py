"""Tiny nnssl-format checkpoints for the tests: ResEnc and Primus networks of dynamic_network_architectures, saved
as nnssl's trainers save them (training form) or as they are released (network_weights + plan + citations, the plan
also as adaptation_plan.json beside the file)."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from dynamic_network_architectures.architectures.primus import Primus
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

CITATION = {"title": "An OpenMind for 3D medical vision self-supervised learning", "year": 2025,
            "bibtex": "@article{wald2025openmind, title={An OpenMind for 3D medical vision SSL}}"}
RESENC_KEYS = {"key_to_encoder": "encoder.stages", "key_to_stem": "encoder.stem",
               "keys_to_in_proj": ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"],
               "key_to_lpe": None}
PLAIN_KEYS = {"key_to_encoder": "encoder.stages", "key_to_stem": "encoder.stages.0",
              "keys_to_in_proj": ["encoder.stages.0.0.convs.0.conv", "encoder.stages.0.0.convs.0.all_modules.0"],
              "key_to_lpe": None}
PRIMUS_KEYS = {"key_to_encoder": "eva", "key_to_stem": "down_projection", "keys_to_in_proj": ["down_projection.proj"],
               "key_to_lpe": "eva.pos_embed"}


def unet_kwargs(n_stages: int = 3, features: Sequence[int] = (4, 8, 16), blocks: Sequence[int] = (1, 2, 2),
                kernels: Sequence[Sequence[int]] | None = None, plain: bool = False) -> dict[str, Any]:
    """Serialised kwargs (dotted class names) of a tiny 3d ResidualEncoderUNet / PlainConvUNet, as nnssl writes them."""
    return {
        "n_stages": n_stages, "features_per_stage": list(features[:n_stages]),
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [list(k) for k in (kernels or [[3, 3, 3]] * n_stages)],
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1),
        ("n_conv_per_stage" if plain else "n_blocks_per_stage"): list(blocks[:n_stages]),
        "n_conv_per_stage_decoder": [1] * (n_stages - 1), "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.modules.activation.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }


def _imported(kwargs: dict[str, Any]) -> dict[str, Any]:
    import pydoc

    out = dict(kwargs)
    for k in ("conv_op", "norm_op", "dropout_op", "nonlin"):
        if out.get(k) is not None:
            out[k] = pydoc.locate(out[k])
    return out


def _perturb(net: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # each tensor once (aliases share it); norms and biases move away from their init too
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


def resenc_network(kwargs: dict[str, Any] | None = None, input_channels: int = 1, num_classes: int = 1,
                   seed: int = 0, plain: bool = False) -> nn.Module:
    """The pretraining network (an MAE reconstructs one channel: num_classes=1)."""
    torch.manual_seed(seed)
    cls = PlainConvUNet if plain else ResidualEncoderUNet
    net = cls(input_channels=input_channels, num_classes=num_classes, deep_supervision=False,
              **_imported(kwargs or unet_kwargs(plain=plain)))
    return _perturb(net, seed)


def primus_kwargs(embed_dim: int = 48, depth: int = 2, heads: int = 2, patch_embed: int = 4) -> dict[str, Any]:
    return {"embed_dim": embed_dim, "patch_embed_size": [patch_embed] * 3, "eva_depth": depth,
            "eva_numheads": heads, "init_values": 0.1, "scale_attn_inner": True}


def primus_network(input_shape: Sequence[int] = (16, 16, 16), kwargs: dict[str, Any] | None = None,
                   input_channels: int = 1, num_classes: int = 1, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    kw = dict(kwargs or primus_kwargs())
    net = Primus(input_channels=input_channels, num_classes=num_classes, input_shape=tuple(input_shape), **kw)
    return _perturb(net, seed)


def pretrain_plan(patch: Sequence[int] = (16, 16, 16), spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[str, Any]:
    """nnssl's Plan.serialize(): one configuration, onemmiso."""
    return {
        "dataset_name": "Dataset745_OpenMind", "plans_name": "nnsslPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0], "image_reader_writer": "NibabelReaderWriter",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "experiment_planner_used": "ExperimentPlanner",
        "configurations": {"onemmiso": {
            "data_identifier": "nnsslPlans_onemmiso", "preprocessor_name": "DefaultPreprocessor",
            "spacing_style": "onemmiso", "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_mask": "resample_data_or_seg_to_shape",
            "resampling_fn_mask_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
            "spacing": list(spacing), "patch_size": list(patch)}},
    }


def adaptation_plan(arch_class_name: str, keys: dict[str, Any], arch_kwargs: dict[str, Any] | None = None,
                    recommended: Sequence[int] = (16, 16, 16), patch: Sequence[int] = (16, 16, 16),
                    spacing: Sequence[float] = (1.0, 1.0, 1.0), singular: bool = False, **extra: Any
                    ) -> dict[str, Any]:
    """An AdaptationPlan.serialize() (``singular``: spelled ``key_to_in_proj`` as some nnssl trainers write it)."""
    plan = {
        "architecture_plans": {
            "arch_class_name": arch_class_name, "arch_kwargs": copy.deepcopy(arch_kwargs),
            "arch_kwargs_requiring_import": (["conv_op", "norm_op", "dropout_op", "nonlin"]
                                             if arch_kwargs and "conv_op" in arch_kwargs else None if not arch_kwargs
                                             else [])},
        "pretrain_plan": pretrain_plan(patch, spacing),
        "pretrain_num_input_channels": 1,
        "recommended_downstream_patchsize": list(recommended),
        **copy.deepcopy(keys),
        **extra,
    }
    if singular:
        plan["key_to_in_proj"] = plan.pop("keys_to_in_proj")
    return plan


def save_nnssl(path: Path, weights: dict[str, torch.Tensor], plan: dict[str, Any], *, form: str = "released",
               embed: bool = True, beside: bool = False, citations: list | None = None,
               trainer_name: str = "BaseMAETrainer") -> Path:
    """Write an nnssl checkpoint as nnssl's trainer (``form="training"``: ``network_weights``, ``optimizer_state``,
    ``grad_scaler_state``, ``logging``, ``_best_ema``, ``current_epoch``, ``init_args`` holding a ``torch.device``,
    ``trainer_name``, ``nnssl_adaptation_plan``) or its release (``"released"``: ``network_weights``, ``init_args``,
    ``trainer_name``, the plan) writes it; the plan embedded and/or beside as ``adaptation_plan.json``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    init_args = {"plan": plan["pretrain_plan"], "configuration_name": "onemmiso", "fold": 0,
                 "pretrain_json": {"name": "OpenMind"}, "device": torch.device("cpu")}
    ckpt: dict[str, Any] = {"network_weights": weights, "init_args": init_args, "trainer_name": trainer_name}
    if form == "training":
        ckpt.update({"optimizer_state": {"state": {}, "param_groups": []}, "grad_scaler_state": None,
                     "logging": {"train_losses": [1.0, 0.5]}, "_best_ema": 0.5, "current_epoch": 2})
    if embed:
        ckpt["nnssl_adaptation_plan"] = plan
    if citations is not None:
        ckpt["citations"] = citations
    torch.save(ckpt, path)
    if beside:
        (path.parent / "adaptation_plan.json").write_text(json.dumps(plan, indent=2))
    return path


def resenc_checkpoint(path: Path, *, seed: int = 0, form: str = "released", kwargs: dict | None = None,
                      plain: bool = False, prefix: str = "", **plan_kw: Any) -> tuple[Path, nn.Module]:
    """A tiny ResEnc (or PlainConvUNet) MAE checkpoint; ``prefix`` ("encoder.") as the contrastive variants write."""
    kwargs = kwargs or unet_kwargs(plain=plain)
    net = resenc_network(kwargs, seed=seed, plain=plain)
    keys = copy.deepcopy(PLAIN_KEYS if plain else RESENC_KEYS)
    weights = dict(net.state_dict())
    if prefix:
        weights = {prefix + k: v for k, v in weights.items() if k.startswith("encoder.")}
        weights[prefix + "projector.weight"] = torch.randn(8, 16)
        keys = {k: (prefix + v if isinstance(v, str) else [prefix + x for x in v] if v else v)
                for k, v in keys.items()}
    name = "PlainConvUNet" if plain else "ResidualEncoderUNet"
    embed, beside, citations = plan_kw.pop("embed", True), plan_kw.pop("beside", False), plan_kw.pop("citations", None)
    plan = adaptation_plan(name, keys, kwargs, **plan_kw)
    return save_nnssl(path, weights, plan, form=form, embed=embed, beside=beside, citations=citations), net


def primus_checkpoint(path: Path, *, seed: int = 0, form: str = "released", input_shape: Sequence[int] = (16, 16, 16),
                      kwargs: dict | None = None, decoder_depth: int = 0, **plan_kw: Any) -> tuple[Path, nn.Module]:
    """A tiny Primus MAE checkpoint (a pos-embed grid of input_shape / patch_embed_size). ``decoder_depth`` > 0 adds
    the Eva decoder nnssl's EvaMAE pretrains with (``decoder.*``, as its trainers save it); ``trainer_name`` (default
    ``BaseEvaMAETrainer``) names the nnssl trainer."""
    kwargs = kwargs or primus_kwargs()
    net = primus_network(input_shape, kwargs, seed=seed)
    weights = dict(net.state_dict())
    if decoder_depth:
        from dynamic_network_architectures.building_blocks.eva import Eva

        grid = tuple(i // p for i, p in zip(input_shape, kwargs["patch_embed_size"], strict=True))
        decoder = _perturb(Eva(embed_dim=kwargs["embed_dim"], depth=decoder_depth, num_heads=kwargs["eva_numheads"],
                               ref_feat_shape=grid, init_values=kwargs.get("init_values"),
                               scale_attn_inner=kwargs.get("scale_attn_inner", False)), seed + 1)
        weights.update({f"decoder.{k}": v for k, v in decoder.state_dict().items()})
    embed, beside, citations = plan_kw.pop("embed", True), plan_kw.pop("beside", False), plan_kw.pop("citations", None)
    trainer_name = plan_kw.pop("trainer_name", "BaseEvaMAETrainer")
    plan = adaptation_plan("dynamic_network_architectures.architectures.primus.Primus", PRIMUS_KEYS, kwargs,
                           **plan_kw)
    return save_nnssl(path, weights, plan, form=form, embed=embed, beside=beside, citations=citations,
                      trainer_name=trainer_name), net
