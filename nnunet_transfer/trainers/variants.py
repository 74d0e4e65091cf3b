"""Variants of nnUNetTrainerAdaptiveFT, each a recipe name (nnU-Net's style: one attribute per variant).

Any recipe can also be used without a class: ``NNUNET_TRANSFER_RECIPE=name_or_path nnUNetv2_train ...``.
"""

from nnunet_transfer.trainers.adaptive_ft import nnUNetTrainerAdaptiveFT

__all__ = [
    "nnUNetTrainerAdaptiveFT_100epochs",
    "nnUNetTrainerAdaptiveFT_250epochs",
    "nnUNetTrainerAdaptiveFT_DecoderOnly",
    "nnUNetTrainerAdaptiveFT_Full",
    "nnUNetTrainerAdaptiveFT_LoRA",
    "nnUNetTrainerAdaptiveFT_nnsslPrimus",
    "nnUNetTrainerAdaptiveFT_nnsslPrimusLoRA",
    "nnUNetTrainerAdaptiveFT_nnsslResEnc",
]


class nnUNetTrainerAdaptiveFT_DecoderOnly(nnUNetTrainerAdaptiveFT):
    """The encoder stays frozen for the whole run."""

    recipe = "decoder_only"


class nnUNetTrainerAdaptiveFT_Full(nnUNetTrainerAdaptiveFT):
    """No freezing; per-group rates (encoder at 0.1x)."""

    recipe = "full_ft"


class nnUNetTrainerAdaptiveFT_250epochs(nnUNetTrainerAdaptiveFT):
    """The default schedule on 250 epochs."""

    recipe = "default_250epochs"


class nnUNetTrainerAdaptiveFT_100epochs(nnUNetTrainerAdaptiveFT):
    """The default schedule on 100 epochs."""

    recipe = "default_100epochs"


class nnUNetTrainerAdaptiveFT_nnsslResEnc(nnUNetTrainerAdaptiveFT):
    """An nnssl ResEnc (ResEnc-L) checkpoint: SGD, whole-network warmup, frozen encoder, then progressive."""

    recipe = "nnssl_resenc"


class nnUNetTrainerAdaptiveFT_nnsslPrimus(nnUNetTrainerAdaptiveFT):
    """An nnssl Primus checkpoint: AdamW (0.9, 0.98), gradient clipping, whole-network warmup, then progressive."""

    recipe = "nnssl_primus"


class nnUNetTrainerAdaptiveFT_LoRA(nnUNetTrainerAdaptiveFT):
    """LoRA adapters on the encoder (its pretrained weights fixed), decoder and heads fully trained (peft extra)."""

    recipe = "lora"


class nnUNetTrainerAdaptiveFT_nnsslPrimusLoRA(nnUNetTrainerAdaptiveFT):
    """An nnssl Primus checkpoint with LoRA adapters on the transformer (peft extra); AdamW, clipping, warmup."""

    recipe = "nnssl_primus_lora"
