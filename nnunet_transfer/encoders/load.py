"""``load_encoder``: a pretrained nnU-Net encoder, rebuilt from its plans, loaded by our loader and verified.

The network is built as its trainer builds it (:func:`nnunet_transfer.nnunet.networks.build_network`, from the plans,
configuration and dataset.json the checkpoint carries in ``init_args``), the checkpoint is loaded into it by
:func:`nnunet_transfer.core.loading.loader.load_pretrained`, and the encoder (what the architecture spec declares)
is checked tensor by tensor: unless every encoder parameter came from the checkpoint (``min_coverage``, default
1.0), nothing is returned and :class:`~nnunet_transfer.errors.LoadGuardError` says which tensors would have stayed
randomly initialised and why. The returned :class:`EncoderBundle` holds the encoder, that report, and what inputs
must look like (:attr:`EncoderBundle.preprocessing`).

>>> bundle = load_encoder("checkpoint_final.pth", features="all")  # doctest: +SKIP
>>> bundle.channels, bundle.strides  # doctest: +SKIP
((32, 64, 128, 256, 320, 320), ((1, 1, 1), (2, 2, 2), (4, 4, 4), (8, 8, 8), (16, 16, 16), (32, 32, 32)))
>>> feats = bundle.encoder(torch.zeros(2, 1, 128, 128, 128))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from nnunet_transfer.core.adapters import is_adapter_key, merge_trained_adapters
from nnunet_transfer.core.architectures import EncoderLayout, architecture_for
from nnunet_transfer.core.loading.checkpoint import SourceCheckpoint, read_checkpoint
from nnunet_transfer.core.loading.keys import strip_wrappers
from nnunet_transfer.core.loading.loader import load_pretrained
from nnunet_transfer.core.loading.options import LoadOptions
from nnunet_transfer.core.loading.report import LoadReport
from nnunet_transfer.core.schedules.groups import derive_groups
from nnunet_transfer.core.schedules.recipes import RECIPE_PLANS_KEY
from nnunet_transfer.encoders.encoder import FeatureSpec, PretrainedEncoder, encoder_layout
from nnunet_transfer.encoders.preprocessing import PreprocessingInfo, preprocess_image, preprocessing_info
from nnunet_transfer.errors import (
    CheckpointError,
    LoadGuardError,
    MissingTrainerWarning,
    PlansError,
    TrainerNotFoundError,
)
from nnunet_transfer.nnunet.datasets import read_json
from nnunet_transfer.nnunet.model_folder import read_model_folder
from nnunet_transfer.nnunet.networks import build_network, find_trainer_class

__all__ = ["EncoderBundle", "build_encoder", "encoder_report", "load_encoder"]


@dataclass
class EncoderBundle:
    """A loaded encoder and everything needed to use it as in pretraining."""

    encoder: PretrainedEncoder
    report: LoadReport  # the encoder's tensors only: coverage = share of encoder parameters from the checkpoint
    network_report: LoadReport  # the load into the whole segmentation network the encoder was taken from
    plans: dict[str, Any]
    configuration: str
    dataset_json: dict[str, Any]
    source: Path  # the checkpoint file
    trainer: str  # the trainer class whose build_network_architecture built the network
    architecture: str  # the architecture spec's name (PlainConvUNet, ResidualEncoderUNet, ...)
    fold: int | str | None = None  # the fold the checkpoint records (or was asked for)
    notes: list[str] = field(default_factory=list)

    @property
    def channels(self) -> tuple[int, ...]:
        """Output channels of every stage (shallowest first)."""
        return self.encoder.channels

    @property
    def strides(self) -> tuple[tuple[int, ...], ...]:
        """Cumulative stride of every stage, per spatial axis."""
        return self.encoder.strides

    @property
    def ndim(self) -> int:
        return self.encoder.ndim

    @property
    def preprocessing(self) -> PreprocessingInfo:
        """Spacing, patch size, normalisation (and statistics), channel names of the pretraining configuration."""
        return preprocessing_info(self.plans, self.configuration, self.dataset_json)

    def preprocess(self, files: str | os.PathLike | list[str | os.PathLike], **kwargs: Any) -> np.ndarray:
        """One image preprocessed as in pretraining (see :func:`~nnunet_transfer.encoders.preprocess_image`)."""
        return preprocess_image(files, self, **kwargs)

    def summary(self) -> str:
        """A few lines for humans: what was built, what was loaded."""
        stages = ", ".join(f"{c}@{'x'.join(map(str, s))}" for c, s in zip(self.channels, self.strides, strict=True))
        return (f"{self.architecture} encoder ({self.ndim}d, configuration {self.configuration}, trainer "
                f"{self.trainer}) from {self.source}\n"
                f"stages (channels@cumulative stride): {stages}; returns stages {list(self.encoder.features)}\n"
                f"{self.report.summary()}")


def _plans_of(source: SourceCheckpoint, plans, dataset_json, configuration) -> tuple[dict, dict, str]:
    where = source.path
    if plans is None:
        plans = source.plans
        if plans is None:
            raise PlansError(f"{where}: the checkpoint carries no nnU-Net plans (init_args.plans); pass plans= (the "
                             "model's plans.json) and dataset_json=")
    else:
        plans = read_json(plans, "plans")
    if dataset_json is None:
        dataset_json = source.dataset_json
        if dataset_json is None:
            raise PlansError(f"{where}: the checkpoint carries no dataset.json (init_args.dataset_json); pass "
                             "dataset_json= (the model's dataset.json)")
    else:
        dataset_json = read_json(dataset_json, "dataset.json")
    configuration = configuration or source.configuration
    if configuration is None:
        raise PlansError(f"{where}: the checkpoint names no configuration (init_args.configuration); pass "
                         f"configuration= (one of {sorted(plans.get('configurations', {}))})")
    return plans, dataset_json, configuration


def build_encoder(plans: dict[str, Any] | str | os.PathLike, configuration: str,
                  dataset_json: dict[str, Any] | str | os.PathLike, *, trainer: str | type | None = None,
                  features: FeatureSpec = "deepest") -> PretrainedEncoder:
    """The encoder of the network ``trainer`` builds for these plans, randomly initialised (a baseline to compare
    a pretrained encoder with; seed with ``torch.manual_seed`` first)."""
    network = build_network(read_json(plans, "plans"), configuration, read_json(dataset_json, "dataset.json"),
                            trainer)
    return PretrainedEncoder.from_network(network, features)


def _encoder_names(layout: EncoderLayout) -> tuple[str, ...]:
    return tuple(n + "." for n in ((layout.stem,) if layout.stem else ()) + layout.stages)


def encoder_report(report: LoadReport, network: nn.Module, layout: EncoderLayout, min_coverage: float) -> LoadReport:
    """The part of a network's load report that concerns the encoder (its tensors, its parameter groups); its
    coverage is the share of the encoder's parameter elements loaded or adapted, its guard ``min_coverage``."""
    prefixes = _encoder_names(layout)
    mine = [r for r in report.tensors if any(n.startswith(prefixes) for n in (r.key, *r.aliases))]
    sub = LoadReport(
        checkpoint=report.checkpoint, format=report.format, container=report.container, key_rules=report.key_rules,
        tensors=mine, unused_source_keys=list(report.unused_source_keys), min_coverage=min_coverage,
        notes=[*report.notes, f"encoder: {', '.join(p[:-1] for p in prefixes)}; the decoder and heads of the "
                              "network are not part of this report"],
        applied=report.applied)
    try:
        groups = derive_groups(network)
    except Exception:  # groups are a courtesy in the table; a family without them still loads
        groups = []
    names = {n for r in mine for n in (r.key, *r.aliases)}
    sub.attach_groups([g for g in groups if set(g.names) & names])
    return sub


def _read(source: str | os.PathLike | SourceCheckpoint, opts: LoadOptions) -> SourceCheckpoint:
    if isinstance(source, SourceCheckpoint):
        return source
    return read_checkpoint(source, container=opts.container, allow_globals=opts.allow_globals,
                           trust_checkpoint=opts.trust_checkpoint)


def _model_folder(path: Path, configuration: str | None, fold: int | str | None, checkpoint_name: str):
    """(checkpoint path, plans, dataset.json, configuration, trainer) of one fold of an nnU-Net model folder, read by
    :func:`nnunet_transfer.nnunet.model_folder.read_model_folder`."""
    folder = read_model_folder(path)
    if fold is None:
        raise PlansError(f"{path}: a model folder; name the fold (fold=...; folds here: "
                         f"{', '.join(folder.folds()) or 'none'})")
    if configuration is not None and configuration != folder.configuration:
        raise PlansError(f"{path}: the model folder of configuration {folder.configuration!r}, not {configuration!r} "
                         "(its name is Trainer__Plans__Configuration)")
    return (folder.checkpoint_path(fold, checkpoint_name), folder.plans, folder.dataset_json, folder.configuration,
            folder.trainer)


def _check_fold(src: SourceCheckpoint, fold: int | str | None) -> int | str | None:
    recorded = src.init_args.get("fold")
    if fold is not None and recorded is not None and str(recorded) != str(fold):
        raise CheckpointError(f"{src.path}: holds the weights of fold {recorded} (init_args.fold), not of fold {fold}")
    value = fold if fold is not None else recorded
    return int(value) if isinstance(value, int) or (isinstance(value, str) and value.isdigit()) else value


def load_encoder(
    source: str | os.PathLike | SourceCheckpoint,
    configuration: str | None = None,
    fold: int | str | None = None,
    *,
    features: FeatureSpec = "deepest",
    checkpoint_name: str = "checkpoint_final.pth",
    plans: dict[str, Any] | str | os.PathLike | None = None,
    dataset_json: dict[str, Any] | str | os.PathLike | None = None,
    trainer: str | type | None = None,
    min_coverage: float = 1.0,
    options: LoadOptions | None = None,
    **overrides: Any,
) -> EncoderBundle:
    """The pretrained encoder of a checkpoint, verified. Raises instead of returning a (partly) random encoder.

    ``source``: a checkpoint our loader reads (nnU-Net's ``checkpoint_final.pth``, or another format with ``plans``
    and ``dataset_json`` given), or nnU-Net's model folder ``Trainer__Plans__Configuration`` with ``fold`` (its
    ``plans.json`` and ``dataset.json``, the fold's ``checkpoint_name``). The network is built from ``plans`` /
    ``configuration`` / ``dataset_json`` (default: the folder's, else the checkpoint's ``init_args``) by
    ``trainer``'s ``build_network_architecture`` (default: the checkpoint's ``trainer_name``; nnU-Net's
    ``nnUNetTrainer`` if it names none, or one not installed here: then with a
    :class:`~nnunet_transfer.errors.MissingTrainerWarning`, and a checkpoint encoder tensor the network lacks is
    refused), then loaded with ``options`` (a
    :class:`~nnunet_transfer.core.loading.options.LoadOptions`; keyword ``overrides`` are its fields: ``rename``,
    ``container``, ...). ``min_coverage`` is the guard over the encoder's parameter elements (default: all of them;
    ``options.min_coverage`` is not used): below it, :class:`~nnunet_transfer.errors.LoadGuardError` (exit code 1)
    with the report. A ``fold`` other than the one the checkpoint records is refused. ``features``: what the encoder
    returns, ``"deepest"`` (one map), ``"all"``, a stage index or a list of indices. The encoder is returned in eval
    mode, on the CPU, holding its own copy of the weights.
    """
    if not 0.0 <= min_coverage <= 1.0:
        raise ValueError(f"min_coverage={min_coverage}: must be within [0, 1]")
    if options is not None and not isinstance(options, LoadOptions):
        raise TypeError(f"options must be a LoadOptions, not {type(options).__name__}")
    opts = (options or LoadOptions()).replace(**overrides)
    folder_trainer = None
    if not isinstance(source, SourceCheckpoint) and Path(source).is_dir():
        source, f_plans, f_dj, configuration, folder_trainer = _model_folder(Path(source), configuration, fold,
                                                                            checkpoint_name)
        plans = f_plans if plans is None else plans
        dataset_json = f_dj if dataset_json is None else dataset_json
    src = _read(source, opts)
    fold = _check_fold(src, fold)
    plans_d, dj, conf = _plans_of(src, plans, dataset_json, configuration)
    notes: list[str] = []
    missing_trainer = None
    if trainer is None and src.nnssl is None:  # nnssl's trainer_name is its pretraining trainer: the plans build it
        trainer, missing_trainer = _installed_trainer(src.trainer_name or folder_trainer, src.path)
        if missing_trainer is not None:
            notes.append(missing_trainer)
    if any(is_adapter_key(k) for k in src.state_dict):  # a LoRA fold: the plain network, its adapters merged
        src = replace(src, state_dict=merge_trained_adapters(src.state_dict, plans_d, src.path))
        notes.append(f"{src.path}: LoRA adapters merged into the weights; the encoder is the plain network")
        build_plans = {k: v for k, v in plans_d.items() if k != RECIPE_PLANS_KEY}  # so no trainer injects adapters
    else:
        build_plans = plans_d
    network = build_network(build_plans, conf, dj, trainer)
    layout = encoder_layout(network)
    # the guard that matters is the encoder's (below); the whole network's coverage is only informative here
    full = load_pretrained(network, src, dj.get("labels"), opts.replace(min_coverage=0.0))
    report = encoder_report(full, network, layout, min_coverage)
    if missing_trainer is not None:
        _check_no_encoder_tensor_left(report, layout, src, src.trainer_name or folder_trainer)
    if not report.passed:
        missing = [r.key for r in report.tensors if r.is_parameter and r.status in ("skipped", "missing")]
        raise LoadGuardError(
            f"{src.path}: only {report.coverage:.1%} of the encoder's parameters would come from the checkpoint, "
            f"below the minimum {min_coverage:.0%}: the rest would stay randomly initialised. Main reasons: "
            f"{'; '.join(report.main_reasons()) or 'none'}; e.g. {', '.join(missing[:3])}. Check that the "
            "checkpoint belongs to these plans and configuration (`nnunet-transfer check`), add rename rules "
            "(rename=...), or lower min_coverage if a partly random encoder is intended.", report)
    encoder = PretrainedEncoder.from_network(network, features, layout).eval()
    trainer_name = trainer if isinstance(trainer, str) else getattr(trainer, "__name__", "nnUNetTrainer")
    return EncoderBundle(
        encoder=encoder, report=report, network_report=full, plans=plans_d, configuration=conf, dataset_json=dj,
        source=Path(src.path), trainer=trainer_name, architecture=architecture_for(network).name, fold=fold,
        notes=notes)


def _installed_trainer(name: str | None, where: object) -> tuple[type | None, str | None]:
    """The trainer class ``name`` names, or None (nnU-Net's ``nnUNetTrainer``) when it names none or one not installed
    here; then also the :class:`~nnunet_transfer.errors.MissingTrainerWarning` issued, else None."""
    if name is None:
        return None, None
    try:
        return find_trainer_class(name), None
    except TrainerNotFoundError:
        message = (f"{where}: trainer {name!r} is not installed here; its network is built by nnU-Net's nnUNetTrainer "
                   "and checked tensor by tensor against the checkpoint (a network of other widths, depth or "
                   "normalisation is refused), but what has no parameters cannot be checked: if the trainer changed "
                   "activations, dropout or the forward pass, this encoder computes differently. For an exact rebuild "
                   "put its module's folder on nnUNet_extTrainer or pass trainer=")
        warnings.warn(message, MissingTrainerWarning, stacklevel=3)
        return None, message


def _check_no_encoder_tensor_left(report: LoadReport, layout: EncoderLayout, src: SourceCheckpoint,
                                  trainer: str | None) -> None:
    """With the checkpoint's trainer not installed, a tensor of the checkpoint's encoder that the network lacks (e.g.
    BatchNorm running statistics where nnUNetTrainer builds InstanceNorm) means another network: refused."""
    prefixes = _encoder_names(layout)
    left = [k for k in report.unused_source_keys if strip_wrappers(k).startswith(prefixes)]
    if left:
        raise LoadGuardError(
            f"{src.path}: the checkpoint's encoder has {len(left)} tensor(s) the network nnUNetTrainer builds lacks "
            f"(e.g. {', '.join(left[:3])}): trainer {trainer!r}, not installed here, builds another network. Put its "
            "module's folder on nnUNet_extTrainer, or pass trainer= (a class that builds the same network).", report)
