"""Pretrained nnU-Net encoders for other tasks: load and verify an encoder, classify with it, prepare its inputs.

* :func:`load_encoder` - the encoder of a checkpoint, rebuilt from its plans, loaded and verified (report);
* :class:`PretrainedEncoder` - the encoder module: per-stage channels and strides, the features asked for;
* :class:`EncoderClassifier` - pooling of one or several stages, dropout, a linear head;
* :class:`FineTuning` - a recipe's freezing, progressive unfreezing and per-group rates on any model
  (shipped recipe ``classifier``: head first, then the encoder with warmup at 0.1x);
* :func:`preprocessing_info`, :func:`preprocess_image`, :func:`preprocess_array` - inputs as in pretraining, by
  nnU-Net's own preprocessor.
"""

from __future__ import annotations

from nnunet_transfer.encoders.classifier import EncoderClassifier, Pooling
from nnunet_transfer.encoders.encoder import FeatureSpec, PretrainedEncoder, encoder_layout, resolve_features
from nnunet_transfer.encoders.finetune import FineTuning
from nnunet_transfer.encoders.load import EncoderBundle, build_encoder, encoder_report, load_encoder
from nnunet_transfer.encoders.preprocessing import (
    PreprocessingInfo,
    preprocess_array,
    preprocess_image,
    preprocessing_info,
)

__all__ = [
    "EncoderBundle",
    "EncoderClassifier",
    "FeatureSpec",
    "FineTuning",
    "Pooling",
    "PreprocessingInfo",
    "PretrainedEncoder",
    "build_encoder",
    "encoder_layout",
    "encoder_report",
    "load_encoder",
    "preprocess_array",
    "preprocess_image",
    "preprocessing_info",
    "resolve_features",
]
