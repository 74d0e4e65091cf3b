"""One fold's network of an nnU-Net model folder, rebuilt and verified for export.

The network is rebuilt as nnU-Net's predictor rebuilds it (``nnUNetPredictor.initialize_from_trained_model_folder``):
from the folder's ``plans.json`` and ``dataset.json`` through the checkpoint's trainer class's
``build_network_architecture`` (or the trainer named with ``trainer=``, ``--trainer``), with deep supervision off.
Every tensor of the network is compared with the checkpoint's after loading: a network that does not hold exactly the
fold's weights is refused. Reading the folder and its checkpoints is the bridge's
(:mod:`nnunet_transfer.nnunet.model_folder`; its names are importable from here too).
"""

from __future__ import annotations

import torch
from torch import nn

from nnunet_transfer.core.modules import unwrap_network
from nnunet_transfer.errors import ExportRefusedError, TrainerNotFoundError
from nnunet_transfer.export.verify import compare_weights
from nnunet_transfer.nnunet.model_folder import (
    DEFAULT_CHECKPOINT,
    FoldCheckpoint,
    ModelFolder,
    read_fold_checkpoint,
    read_model_folder,
)
from nnunet_transfer.nnunet.networks import build_network, disable_deep_supervision

__all__ = [
    "DEFAULT_CHECKPOINT",
    "FoldCheckpoint",
    "ModelFolder",
    "build_fold_network",
    "disable_deep_supervision",
    "read_fold_checkpoint",
    "read_model_folder",
    "trainer_not_installed",
]


def trainer_not_installed(e: TrainerNotFoundError, where: object) -> TrainerNotFoundError:
    """The error for a model whose trainer class is not installed here, where an exact forward pass matters: it
    names the trainer, how to install it, and the explicit choice (``--trainer NAME``, Python ``trainer=``) of an
    installed trainer that builds the same network."""
    return TrainerNotFoundError(
        f"{where}: {e}; to build the network with an installed trainer instead, give --trainer NAME (Python: "
        "trainer=NAME), e.g. nnUNetTrainer for a subclass that keeps nnU-Net's network (the weights are still checked "
        "tensor by tensor)", e.trainer)


def _fit_problems(network_state: dict[str, torch.Tensor], ckpt: FoldCheckpoint) -> str:
    missing = [k for k in network_state if k not in ckpt.state_dict]
    unexpected = [k for k in ckpt.state_dict if k not in network_state]
    shapes = [f"{k}: checkpoint {tuple(ckpt.state_dict[k].shape)} vs network {tuple(t.shape)}"
              for k, t in network_state.items() if k in ckpt.state_dict and ckpt.state_dict[k].shape != t.shape]
    parts = []
    for what, items in (("missing from the checkpoint", missing), ("not in the network", unexpected),
                        ("with other shapes", shapes)):
        if items:
            parts.append(f"{len(items)} tensor(s) {what} (first: {items[0]})")
    return "; ".join(parts)


def build_fold_network(folder: ModelFolder, checkpoint: FoldCheckpoint, trainer: str | type | None = None
                       ) -> nn.Module:
    """A new network for the folder's configuration holding exactly the checkpoint's weights: eval mode, on the
    CPU, deep supervision off.

    Built by :func:`nnunet_transfer.nnunet.networks.build_network` with ``trainer`` (default: the checkpoint's
    trainer class; TrainerNotFoundError, exit 2, naming ``--trainer`` when it is not installed). ExportRefusedError
    (exit 1) when the checkpoint does not fit the network the plans build, or when a tensor of the loaded network
    differs from the checkpoint's.
    """
    builder = trainer if trainer is not None else checkpoint.trainer_name
    name = builder if isinstance(builder, str) else builder.__name__
    try:
        with torch.device("cpu"):
            network = build_network(folder.plans, folder.configuration, folder.dataset_json, trainer=builder)
    except TrainerNotFoundError as e:
        if trainer is not None:
            raise
        raise trainer_not_installed(e, checkpoint.path) from None
    network = unwrap_network(network)
    disable_deep_supervision(network)
    problems = _fit_problems(network.state_dict(), checkpoint)
    if problems:
        raise ExportRefusedError(f"{checkpoint.path}: does not fit the network {name} builds from "
                                 f"{folder.path / 'plans.json'} for {folder.configuration}: {problems}")
    network.load_state_dict(checkpoint.state_dict, strict=True)
    network.eval()
    check = compare_weights(network.state_dict(), checkpoint.state_dict, "the loaded network")
    if not check.passed:
        raise ExportRefusedError(f"{checkpoint.path}: after loading, {check.describe()}")
    return network
