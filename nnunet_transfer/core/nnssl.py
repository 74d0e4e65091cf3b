"""nnssl (OpenMind) checkpoints: the adaptation plan, architecture presets, and which tensors transfer.

nnssl is nnU-Net's self-supervised pretraining framework. Its checkpoints are torch zip pickles that load with
``weights_only=True``: ``network_weights`` and ``nnssl_adaptation_plan`` (training form: also ``optimizer_state``,
``logging``, ``current_epoch``...; released form: ``network_weights``, ``init_args``, ``trainer_name``, the plan and
sometimes ``citations``, with the same plan as ``adaptation_plan.json`` beside ``checkpoint_final.pth``). The plan
says which architecture was pretrained (a preset such as ``ResEncL`` or ``PrimusM``, or a
dynamic_network_architectures class with its kwargs), the pretraining spacing and patch size, the recommended
downstream patch size, and where stem, encoder, input projection and learnable positional embedding sit in the
state dict.

This module (no nnunetv2) validates the plan (:class:`AdaptationPlan`, both spellings ``keys_to_in_proj`` and
``key_to_in_proj``), resolves the architecture into the ``architecture`` entry of nnU-Net plans
(:func:`nnunet_architecture`: ``network_class_name``, ``arch_kwargs``, ``_kw_requires_import``) so that the network
builds from the plans alone, writes nnU-Net plans for it (:func:`nnunet_plans`), and maps the declared stem, encoder
and positional embedding of the checkpoint onto those a target network declares (:class:`NnsslKeyMap`), whatever
prefixes either side uses (contrastive variants prefix everything with ``encoder.``). The pretraining decoder and
head reconstruct images; they are not loaded unless asked for (``load_decoder``), the head never.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pydoc
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from nnunet_transfer.core.loading.keys import strip_wrappers
from nnunet_transfer.errors import CheckpointError

__all__ = [
    "ADAPTATION_PLAN_FILE",
    "PLAN_KEY",
    "PRESETS",
    "AdaptationPlan",
    "ArchitecturePlans",
    "NnsslCheckpoint",
    "NnsslError",
    "NnsslKeyMap",
    "declared_parts",
    "detect_nnssl",
    "nnunet_architecture",
    "nnunet_plans",
]

PLAN_KEY = "nnssl_adaptation_plan"
ADAPTATION_PLAN_FILE = "adaptation_plan.json"
_TRAINING_ENTRIES = ("optimizer_state", "grad_scaler_state", "logging", "_best_ema", "current_epoch")
_IMPORTED_KWARGS = ("conv_op", "norm_op", "dropout_op", "nonlin")
_PRIMUS = "dynamic_network_architectures.architectures.primus.Primus"
_RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
_PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"


class NnsslError(CheckpointError):
    """An nnssl checkpoint's adaptation plan is malformed, names an unknown architecture or keys it does not hold."""


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


def nnunet_architecture(plan: AdaptationPlan, patch_size: Sequence[int], where: str = "nnssl_adaptation_plan"
                        ) -> dict[str, Any]:
    """The ``architecture`` entry of nnU-Net plans that builds the pretrained network for ``patch_size``.

    Presets are resolved to dynamic_network_architectures classes; a class name with ``arch_kwargs`` is used as
    given (``n_blocks_per_stage`` becomes ``n_conv_per_stage`` for PlainConvUNet); networks that take an
    ``input_shape`` (Primus) get the patch size. Raises :class:`NnsslError` naming ``where`` and the field.
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
    return {"network_class_name": class_name, "arch_kwargs": kwargs, "_kw_requires_import": imports}


def nnunet_plans(plan: AdaptationPlan, *, patch_size: Sequence[int] | None = None, batch_size: int = 2,
                 configuration: str = "3d_fullres", plans_name: str = "nnsslPlans",
                 dataset_name: str = "nnssl_pretraining") -> dict[str, Any]:
    """nnU-Net plans (one configuration) that build the pretrained network: the recommended downstream patch size
    (or ``patch_size``), the pretraining spacing, z-score normalisation, ``batch_size``. The target's dataset name,
    intensity statistics and channel count are filled in by the plans transfer."""
    patch = [int(p) for p in (patch_size if patch_size is not None else plan.recommended_downstream_patchsize)]
    arch = nnunet_architecture(plan, patch)
    spacing = plan.pretrain_spacing or [1.0, 1.0, 1.0]
    conf = plan.pretrain_configuration
    norm = conf.get("normalization_schemes") or ["ZScoreNormalization"]
    resample = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    configuration_dict = {
        "data_identifier": f"{plans_name}_{configuration}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": int(batch_size),
        "patch_size": patch,
        "median_image_size_in_voxels": [float(p) for p in patch],
        "spacing": [float(s) for s in spacing],
        "normalization_schemes": list(norm[:1]),
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": resample,
        "resampling_fn_seg_kwargs": {**resample, "is_seg": True, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**resample, "order": 1},
        "architecture": arch,
        "batch_dice": False,
    }
    return {
        "dataset_name": dataset_name,
        "plans_name": plans_name,
        "original_median_spacing_after_transp": [float(s) for s in spacing],
        "original_median_shape_after_transp": patch,
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {configuration: configuration_dict},
        "experiment_planner_used": "nnssl adaptation plan (nnunet-transfer)",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
    }


# --- the checkpoint -------------------------------------------------------------------------------------------


@dataclass
class NnsslCheckpoint:
    """What an nnssl checkpoint adds to a :class:`~nnunet_transfer.core.loading.checkpoint.SourceCheckpoint`."""

    plan: AdaptationPlan
    plan_source: str  # "embedded (nnssl_adaptation_plan)" or the path of adaptation_plan.json
    form: Literal["training", "released"]
    citations: list[Any] = field(default_factory=list)
    architecture: dict[str, Any] = field(default_factory=dict)  # nnunet_architecture() at the recommended patch

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
        try:
            raw = json.loads(beside.read_text())
        except (OSError, ValueError) as e:
            raise NnsslError(f"{beside}: not a readable JSON adaptation plan ({e})") from None
        source, where = str(beside), ADAPTATION_PLAN_FILE
    if not isinstance(raw, Mapping):
        raise NnsslError(f"{path}: {where} is a {type(raw).__name__}, expected a mapping")
    try:
        plan = AdaptationPlan.model_validate(dict(raw))
    except ValidationError as e:
        raise NnsslError(f"{path if embedded is not None else source}: malformed adaptation plan: "
                         f"{_format_validation(where, e)}") from None
    _check_keys(plan, keys, path, where)
    try:
        architecture = nnunet_architecture(plan, plan.recommended_downstream_patchsize, where)
    except NnsslError as e:
        raise NnsslError(f"{path}: {e}") from None
    citations = entries.get("citations")
    citations = list(citations) if isinstance(citations, list | tuple) else ([] if citations is None else [citations])
    form: Literal["training", "released"] = (
        "training" if any(k in entries for k in _TRAINING_ENTRIES) else "released")
    return NnsslCheckpoint(plan, source, form, citations, architecture)


# --- loading: the source's declared parts onto the target's ------------------------------------------------------


def declared_parts(network: Any, spec_name: str = "") -> tuple[str | None, str | None]:
    """(stem, encoder) a target network declares (``key_to_stem``, ``key_to_encoder``), with nnU-Net's layouts as
    defaults for the built-in families (``spec_name``: the network's architecture entry)."""
    defaults = {"PlainConvUNet": ("encoder.stages.0", "encoder.stages"),
                "ResidualEncoderUNet": ("encoder.stem", "encoder.stages"),
                "Primus": ("down_projection", "eva")}.get(spec_name, (None, None))

    def get(attr: str, default: str | None) -> str | None:
        value = getattr(network, attr, None)
        return value if isinstance(value, str) and value else default

    return get("key_to_stem", defaults[0]), get("key_to_encoder", defaults[1])


_STAGE = re.compile(r"(\d+)\.(?:blocks\.)?(?:(\d+)\.)?")


@dataclass
class NnsslKeyMap:
    """Maps checkpoint keys onto the target's names by the declared parts: the source's stem onto the target's
    stem, encoder onto encoder, positional embedding onto positional embedding (longest prefix first, so a stem
    inside the encoder, as in PlainConvUNet, goes to the stem). Everything else belongs to the pretraining decoder
    and head: dropped, unless ``load_decoder`` (then kept under its own name where the target has it; heads never).
    Callable as a loader ``key_map``; records what it dropped."""

    plan: AdaptationPlan
    target_stem: str | None
    target_encoder: str | None
    target_lpe: str | None
    target_names: frozenset[str]
    load_decoder: bool = False
    head_pattern: str = r"(?!)"
    dropped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        p = self.plan
        pairs = [(p.key_to_stem, self.target_stem, "stem"), (p.key_to_encoder, self.target_encoder, "encoder")]
        self._pairs = sorted(((s, t, what) for s, t, what in pairs if t), key=lambda x: -len(x[0]))
        self._head = re.compile(self.head_pattern)

    def __call__(self, key: str) -> str | None:
        name = strip_wrappers(key)
        if self.plan.key_to_lpe is not None and name == self.plan.key_to_lpe and self.target_lpe:
            return self.target_lpe
        for src, tgt, _ in self._pairs:
            if name.startswith(src + "."):
                return tgt + name[len(src):]
        if self.load_decoder and name in self.target_names and not self._head.fullmatch(name):
            return name
        self.dropped.append(key)
        return None

    def in_scope(self, names: Iterable[str]) -> bool:
        """Whether a target tensor (any of its names) is part of the stem, encoder or positional embedding."""
        prefixes = tuple(t + "." for t in (self.target_stem, self.target_encoder) if t)
        return any(n.startswith(prefixes) or n == self.target_lpe for n in names)

    def stage_of(self, name: str) -> tuple[int, int | None] | None:
        """(stage, block) of a target encoder tensor name (``<encoder>.<stage>.<block>.``), else None."""
        if not self.target_encoder or not name.startswith(self.target_encoder + "."):
            return None
        m = _STAGE.match(name[len(self.target_encoder) + 1:])
        if m is None:
            return None
        return int(m.group(1)), (int(m.group(2)) if m.group(2) is not None else None)

    def describe(self) -> str:
        p = self.plan
        parts = [f"{what} {src!r} -> {tgt!r}" for src, tgt, what in self._pairs]
        if p.key_to_lpe and self.target_lpe:
            parts.append(f"positional embedding {p.key_to_lpe!r} -> {self.target_lpe!r}")
        return (f"nnssl checkpoint ({p.architecture_plans.arch_class_name}): {', '.join(parts)}; "
                f"{len(self.dropped)} tensors of the pretraining decoder and head not loaded"
                + (" (load_decoder: the decoder loads where names and shapes match; heads never)"
                   if self.load_decoder else " (recipe pretrained.load_decoder: true loads the decoder where shapes "
                                              "allow)"))
