"""Verified TorchScript / ONNX export of a trained nnU-Net model's network (one fold), with the JSON that inference
needs beside it (see :mod:`nnunet_transfer.export.exporter`), and sharing a fine-tuned model folder as a plain nnU-Net
model (see :mod:`nnunet_transfer.export.share`)."""

from nnunet_transfer.errors import ExportError, ExportRefusedError, MissingExtraError
from nnunet_transfer.export.exporter import FORMATS, ExportResult, export_model, export_network, metadata_path
from nnunet_transfer.export.model_folder import (
    DEFAULT_CHECKPOINT,
    FoldCheckpoint,
    ModelFolder,
    build_fold_network,
    read_fold_checkpoint,
    read_model_folder,
)
from nnunet_transfer.export.share import SharedModel, ShareResult, share_models
from nnunet_transfer.export.verify import DEFAULT_RTOL, TOLERANCE_RULE, OutputCheck, WeightCheck, compare_weights

__all__ = [
    "DEFAULT_CHECKPOINT",
    "DEFAULT_RTOL",
    "FORMATS",
    "TOLERANCE_RULE",
    "ExportError",
    "ExportRefusedError",
    "ExportResult",
    "FoldCheckpoint",
    "MissingExtraError",
    "ModelFolder",
    "OutputCheck",
    "ShareResult",
    "SharedModel",
    "WeightCheck",
    "build_fold_network",
    "compare_weights",
    "export_model",
    "export_network",
    "metadata_path",
    "read_fold_checkpoint",
    "read_model_folder",
    "share_models",
]
