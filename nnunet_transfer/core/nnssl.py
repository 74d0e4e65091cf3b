"""nnssl (OpenMind) checkpoints: recognising them, their adaptation plan and architecture presets.

nnssl is nnU-Net's self-supervised pretraining framework. Its checkpoints are torch zip pickles that load with
``weights_only=True``: ``network_weights`` and ``nnssl_adaptation_plan`` (training form: also ``optimizer_state``,
``logging``, ``current_epoch``...; released form: ``network_weights``, ``init_args``, ``trainer_name``, the plan and
sometimes ``citations``, with the same plan as ``adaptation_plan.json`` beside ``checkpoint_final.pth``). The plan
says which architecture was pretrained (a preset such as ``ResEncL`` or ``PrimusM``, or a
dynamic_network_architectures class with its kwargs), the pretraining spacing and patch size, the recommended
downstream patch size, and where stem, encoder, input projection and learnable positional embedding sit in the
state dict.

This module (no nnunetv2) reads the format: it recognises an nnssl checkpoint (:func:`detect_nnssl`), validates
the plan (:class:`AdaptationPlan`, both spellings ``keys_to_in_proj`` and ``key_to_in_proj``) and resolves the
architecture it names into the ``architecture`` entry of nnU-Net plans (:func:`nnunet_architecture`:
``network_class_name``, ``arch_kwargs``, ``_kw_requires_import``), so that a bad plan is refused when the file is read.
Whole nnU-Net plans for the pretrained network are the bridge's
(:func:`nnunet_transfer.nnunet.plans.nnssl.nnunet_plans`); how the declared stem, encoder and positional embedding
load onto a target network sits beside the loader (:mod:`nnunet_transfer.core.loading.nnssl_map`).
"""

from __future__ import annotations

import importlib
import inspect
import json
import pydoc
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from nnunet_transfer.core.io import read_json_object
from nnunet_transfer.core.loading.keys import strip_wrappers
from nnunet_transfer.errors import NnsslError

__all__ = [
    "ADAPTATION_PLAN_FILE",
    "PLAN_KEY",
    "PRESETS",
    "AdaptationPlan",
    "ArchitecturePlans",
    "NnsslCheckpoint",
    "NnsslError",
    "detect_nnssl",
    "nnunet_architecture",
    "pretraining_token_order",
]

PLAN_KEY = "nnssl_adaptation_plan"
ADAPTATION_PLAN_FILE = "adaptation_plan.json"
_TRAINING_ENTRIES = ("optimizer_state", "grad_scaler_state", "logging", "_best_ema", "current_epoch")
_IMPORTED_KWARGS = ("conv_op", "norm_op", "dropout_op", "nonlin")
_PRIMUS = "dynamic_network_architectures.architectures.primus.Primus"
_RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
_PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"


def _resenc_l() -> dict[str, Any]:
    return {
        "n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
        "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 6,
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5, "n_blocks_per_stage": [1, 3, 4, 6, 6, 6],
        "n_conv_per_stage_decoder": [1] * 5, "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }


def _primus(embed_dim: int, depth: int, heads: int) -> dict[str, Any]:
    # as nnU-Net's own Primus fine-tuning trainers build it (patch embedding 8^3; input_shape = the patch size)
    return {"embed_dim": embed_dim, "patch_embed_size": [8, 8, 8], "eva_depth": depth, "eva_numheads": heads,
            "drop_path_rate": 0.2, "scale_attn_inner": True, "init_values": 0.1}


#: nnssl's architecture presets: (network class, its kwargs, kwargs naming classes to import)
PRESETS: dict[str, tuple[str, dict[str, Any], list[str]]] = {
    "ResEncL": (_RESENC, _resenc_l(), list(_IMPORTED_KWARGS)),
    "PrimusS": (_PRIMUS, _primus(396, 12, 6), []),
    "PrimusB": (_PRIMUS, _primus(792, 12, 12), []),
    "PrimusM": (_PRIMUS, _primus(864, 16, 12), []),
    "PrimusL": (_PRIMUS, _primus(1056, 24, 16), []),
}


class ArchitecturePlans(BaseModel):
    """``nnssl_adaptation_plan.architecture_plans``."""

    model_config = ConfigDict(extra="allow")

    arch_class_name: str = Field(min_length=1)
    arch_kwargs: dict[str, Any] | None = None
    arch_kwargs_requiring_import: list[str] | None = None


def _patch(value: Any) -> Any:
    if value is None or isinstance(value, list | tuple):
        return value
    raise ValueError(f"expected a list of 3 positive integers, got {value!r}")


class AdaptationPlan(BaseModel):
    """``nnssl_adaptation_plan`` (or ``adaptation_plan.json``), validated. Unknown extra entries are kept."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    architecture_plans: ArchitecturePlans
    pretrain_plan: dict[str, Any]
    pretrain_num_input_channels: int = Field(ge=1)
    recommended_downstream_patchsize: tuple[int, int, int]
    key_to_encoder: str = Field(min_length=1)
    key_to_stem: str = Field(min_length=1)
    keys_to_in_proj: tuple[str, ...] = Field(
        min_length=1, validation_alias=AliasChoices("keys_to_in_proj", "key_to_in_proj"))
    key_to_lpe: str | None = None
    pretrain_patch_size: tuple[int, int, int] | None = None

    @field_validator("keys_to_in_proj", mode="before")
    @classmethod
    def _one_key(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("recommended_downstream_patchsize", "pretrain_patch_size", mode="before")
    @classmethod
    def _patch_list(cls, value: Any) -> Any:
        return _patch(value)

    @field_validator("recommended_downstream_patchsize", "pretrain_patch_size")
    @classmethod
    def _positive(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and any(v <= 0 for v in value):
            raise ValueError(f"patch sizes must be positive, got {list(value)}")
        return value

    @field_validator("pretrain_plan")
    @classmethod
    def _configurations(cls, value: dict[str, Any]) -> dict[str, Any]:
        confs = value.get("configurations")
        if not isinstance(confs, Mapping) or not confs or not all(isinstance(c, Mapping) for c in confs.values()):
            raise ValueError("needs 'configurations': a mapping of configuration name -> settings (e.g. onemmiso)")
        return value

    # --- what the pretraining used ---------------------------------------------------------------------------
    @property
    def pretrain_configuration_name(self) -> str:
        confs = self.pretrain_plan["configurations"]
        return "onemmiso" if "onemmiso" in confs else next(iter(confs))

    @property
    def pretrain_configuration(self) -> dict[str, Any]:
        return dict(self.pretrain_plan["configurations"][self.pretrain_configuration_name])

    @property
    def pretrain_spacing(self) -> list[float] | None:
        sp = self.pretrain_configuration.get("spacing")
        return [float(s) for s in sp] if isinstance(sp, list | tuple) and len(sp) == 3 else None

    @property
    def pretrain_patch(self) -> list[int] | None:
        if self.pretrain_patch_size is not None:
            return list(self.pretrain_patch_size)
        ps = self.pretrain_configuration.get("patch_size")
        return [int(p) for p in ps] if isinstance(ps, list | tuple) and len(ps) == 3 else None


# --- architecture ---------------------------------------------------------------------------------------------


def _locate_class(name: str) -> type | None:
    """A class by dotted name, or by bare name among dynamic_network_architectures' architectures."""
    with warnings.catch_warnings():  # importing timm (Primus) warns about torch.jit deprecations
        warnings.simplefilter("ignore")
        if "." in name:
            obj = pydoc.locate(name)
            return obj if isinstance(obj, type) else None
        for module_name in ("unet", "primus", "resnet", "vgg"):
            try:
                module = importlib.import_module(f"dynamic_network_architectures.architectures.{module_name}")
            except ImportError:
                continue
            obj = getattr(module, name, None)
            if isinstance(obj, type):
                return obj
    return None


def _accepts(cls: type, name: str) -> bool:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


_PRIMUS_HWD = "nnunet_transfer.core.primus.PrimusHWD"  # core.primus.PRIMUS_HWD (not imported here: timm is slow)
TOKEN_ORDERS = ("whd", "hwd")


def pretraining_token_order(plan: AdaptationPlan, trainer_name: str | None,
                            where: str = "nnssl_adaptation_plan") -> Literal["whd", "hwd"] | None:
    """How the pretraining flattened a Primus's patch tokens (None for other networks): the plan's ``token_order``
    where it says so; else ``whd`` for nnssl's SimMIM trainers (``b c w h d -> b (w h d) c``, as Primus) and ``hwd``
    for every other nnssl trainer of a Primus (they pretrain nnssl's ``EvaMAE``: ``b c w h d -> b (h w d) c``)."""
    declared = (plan.model_extra or {}).get("token_order")
    if declared is not None:
        if declared not in TOKEN_ORDERS:
            raise NnsslError(f"{where}.token_order: {declared!r}, expected one of {', '.join(TOKEN_ORDERS)}")
        return declared
    ap = plan.architecture_plans
    name = PRESETS[ap.arch_class_name][0] if ap.arch_class_name in PRESETS and not ap.arch_kwargs else str(
        ap.arch_class_name)
    if name.rsplit(".", 1)[-1] != "Primus":
        return None
    return "whd" if trainer_name and "simmim" in trainer_name.lower() else "hwd"


def nnunet_architecture(plan: AdaptationPlan, patch_size: Sequence[int], where: str = "nnssl_adaptation_plan",
                        token_order: str | None = None) -> dict[str, Any]:
    """The ``architecture`` entry of nnU-Net plans that builds the pretrained network for ``patch_size``.

    Presets are resolved to dynamic_network_architectures classes; a class name with ``arch_kwargs`` is used as
    given (``n_blocks_per_stage`` becomes ``n_conv_per_stage`` for PlainConvUNet); networks that take an
    ``input_shape`` (Primus) get the patch size. A Primus pretrained with ``token_order`` ``hwd`` (see
    :func:`pretraining_token_order`) becomes :class:`nnunet_transfer.core.primus.PrimusHWD`, the same network with
    the pretraining's token order. Raises :class:`NnsslError` naming ``where`` and the field.
    """
    ap = plan.architecture_plans
    field_name = f"{where}.architecture_plans"
    if ap.arch_kwargs:
        cls = _locate_class(ap.arch_class_name)
        if cls is None:
            raise NnsslError(f"{field_name}.arch_class_name: unknown architecture {ap.arch_class_name!r}: not a "
                             f"preset ({', '.join(PRESETS)}) and no importable class of that name")
        class_name = f"{cls.__module__}.{cls.__qualname__}"
        kwargs = json.loads(json.dumps(ap.arch_kwargs))
        if cls.__name__ == "PlainConvUNet" and "n_conv_per_stage" not in kwargs and "n_blocks_per_stage" in kwargs:
            kwargs["n_conv_per_stage"] = kwargs.pop("n_blocks_per_stage")
        requested = ap.arch_kwargs_requiring_import
        imports = [k for k in (requested if requested is not None else _IMPORTED_KWARGS) if k in kwargs]
    elif ap.arch_class_name in PRESETS:
        class_name, kwargs, imports = PRESETS[ap.arch_class_name]
        kwargs, imports = json.loads(json.dumps(kwargs)), list(imports)
        cls = _locate_class(class_name)
    else:
        raise NnsslError(f"{field_name}.arch_class_name: unknown architecture {ap.arch_class_name!r}: presets are "
                         f"{', '.join(PRESETS)}; any other class needs arch_kwargs")
    if cls is None:  # pragma: no cover - presets name installed classes
        raise NnsslError(f"{field_name}.arch_class_name: {class_name!r} cannot be imported")
    for key in imports:
        value = kwargs.get(key)
        if value is not None and not isinstance(pydoc.locate(str(value)), type):
            raise NnsslError(f"{field_name}.arch_kwargs.{key}: {value!r} names no importable class")
    if _accepts(cls, "input_shape"):
        kwargs["input_shape"] = [int(p) for p in patch_size]
    if class_name == _PRIMUS and token_order == "hwd":
        class_name = _PRIMUS_HWD
    return {"network_class_name": class_name, "arch_kwargs": kwargs, "_kw_requires_import": imports}


# --- the checkpoint -------------------------------------------------------------------------------------------


@dataclass
class NnsslCheckpoint:
    """What an nnssl checkpoint adds to a :class:`~nnunet_transfer.core.loading.checkpoint.SourceCheckpoint`."""

    plan: AdaptationPlan
    plan_source: str  # "embedded (nnssl_adaptation_plan)" or the path of adaptation_plan.json
    form: Literal["training", "released"]
    citations: list[Any] = field(default_factory=list)
    architecture: dict[str, Any] = field(default_factory=dict)  # nnunet_architecture() at the recommended patch
    trainer_name: str | None = None  # the nnssl trainer that pretrained it
    token_order: Literal["whd", "hwd"] | None = None  # a Primus's pretraining token order (pretraining_token_order)

    def describe(self) -> dict[str, Any]:
        """The facts ``nnunet-transfer inspect`` shows (JSON-serialisable)."""
        p = self.plan
        return {
            "form": self.form,
            "adaptation_plan": self.plan_source,
            "architecture": p.architecture_plans.arch_class_name,
            "network_class_name": self.architecture.get("network_class_name"),
            "pretrain_configuration": p.pretrain_configuration_name,
            "pretrain_spacing": p.pretrain_spacing,
            "pretrain_patch_size": p.pretrain_patch,
            "pretrain_num_input_channels": p.pretrain_num_input_channels,
            "recommended_downstream_patchsize": list(p.recommended_downstream_patchsize),
            "key_to_stem": p.key_to_stem,
            "key_to_encoder": p.key_to_encoder,
            "keys_to_in_proj": list(p.keys_to_in_proj),
            "key_to_lpe": p.key_to_lpe,
            "citations": self.citations,
            "trainer_name": self.trainer_name,
            "token_order": self.token_order,
        }


def _format_validation(where: str, e: ValidationError) -> str:
    problems = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(f"{where}{'.' + loc if loc else ''}: {msg}")
    return "; ".join(problems)


def _plan_beside(path: Path) -> Path | None:
    for folder in (path.parent, path.parent.parent):  # released: beside; nnssl's training: the trainer folder
        candidate = folder / ADAPTATION_PLAN_FILE
        if candidate.is_file():
            return candidate
    return None


def _check_keys(plan: AdaptationPlan, keys: Iterable[str], path: Path, where: str) -> None:
    names = {strip_wrappers(k) for k in keys}
    firsts = sorted({k.split(".")[0] for k in names})
    for attr in ("key_to_encoder", "key_to_stem"):
        prefix = getattr(plan, attr)
        if not any(n.startswith(prefix + ".") for n in names):
            raise NnsslError(f"{path}: {where}.{attr} {prefix!r}: no tensor of the checkpoint starts with "
                             f"'{prefix}.' (top-level prefixes: {firsts})")
    for key in plan.keys_to_in_proj:
        if f"{key}.weight" not in names:
            raise NnsslError(f"{path}: {where}.keys_to_in_proj {key!r}: the checkpoint has no tensor "
                             f"'{key}.weight'")
    if plan.key_to_lpe is not None and plan.key_to_lpe not in names:
        raise NnsslError(f"{path}: {where}.key_to_lpe {plan.key_to_lpe!r}: no such tensor in the checkpoint")


def detect_nnssl(path: Path, entries: Mapping[str, Any], container: str, keys: Iterable[str]
                 ) -> NnsslCheckpoint | None:
    """The nnssl facts of a checkpoint whose top-level ``entries`` were read from ``path`` (None if it is none).

    An nnssl checkpoint holds ``network_weights`` and an adaptation plan: embedded (``nnssl_adaptation_plan``) or
    ``adaptation_plan.json`` beside the file (or in the folder above, where nnssl's trainer writes it). The plan is
    validated, its architecture resolved and its keys checked against the tensors; any problem is one
    :class:`NnsslError` naming the file and the field.
    """
    if container.split(".")[0] != "network_weights":
        return None
    embedded = entries.get(PLAN_KEY)
    if embedded is not None:
        raw, source, where = embedded, f"embedded ({PLAN_KEY})", PLAN_KEY
    else:
        init_args = entries.get("init_args")
        if isinstance(init_args, Mapping) and isinstance(init_args.get("plans"), Mapping):
            return None  # an nnU-Net checkpoint
        beside = _plan_beside(path)
        if beside is None:
            return None
        raw = read_json_object(beside, "adaptation plan", NnsslError)
        source, where = str(beside), ADAPTATION_PLAN_FILE
    if not isinstance(raw, Mapping):
        raise NnsslError(f"{path}: {where} is a {type(raw).__name__}, expected a mapping")
    try:
        plan = AdaptationPlan.model_validate(dict(raw))
    except ValidationError as e:
        raise NnsslError(f"{path if embedded is not None else source}: malformed adaptation plan: "
                         f"{_format_validation(where, e)}") from None
    _check_keys(plan, keys, path, where)
    trainer_name = entries.get("trainer_name")
    trainer_name = trainer_name if isinstance(trainer_name, str) else None
    try:
        order = pretraining_token_order(plan, trainer_name, where)
        architecture = nnunet_architecture(plan, plan.recommended_downstream_patchsize, where, order)
    except NnsslError as e:
        raise NnsslError(f"{path}: {e}") from None
    citations = entries.get("citations")
    citations = list(citations) if isinstance(citations, list | tuple) else ([] if citations is None else [citations])
    form: Literal["training", "released"] = (
        "training" if any(k in entries for k in _TRAINING_ENTRIES) else "released")
    return NnsslCheckpoint(plan, source, form, citations, architecture, trainer_name, order)
