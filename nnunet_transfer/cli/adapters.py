"""``nnunet-transfer adapters extract|apply``: one base checkpoint, many LoRA adapters (peft's files).

``extract MODEL_FOLDER -f FOLD -o DIR`` writes the fold's adapters (and its other trained tensors) in peft's format;
``apply BASE_CKPT ADAPTER_DIR -o CKPT`` writes the full nnU-Net checkpoint (adapters merged, ``nnUNetTrainer``'s) of
that fold, refused when the base checkpoint's SHA-256 or architecture differs. Exit codes: 0 written; 2 unusable input
(not a LoRA model folder, a wrong base, peft missing); nothing is written unless the exit code is 0.
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run_apply", "run_extract"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("adapters", help="LoRA adapters of a fold as peft's files, and back to a full checkpoint",
                       description="One base checkpoint, many adapters: extract a LoRA fold's adapters "
                                   "(adapter_config.json + adapter_model.safetensors, with the SHA-256 of its base "
                                   "checkpoint), or apply them to the base to get the fold's full nnU-Net checkpoint.")
    actions = p.add_subparsers(dest="action", required=True)
    e = actions.add_parser("extract", help="write fold F's adapters (peft format) into DIR",
                           description="Write fold F of MODEL_FOLDER (trained with nnUNetTrainerAdaptiveFT_LoRA) in "
                                       "peft's format into DIR: its adapters and its other trained tensors; the "
                                       "pretrained weights stay in the base checkpoint.")
    e.add_argument("model_folder", metavar="MODEL_FOLDER", help="a Trainer__Plans__Configuration folder")
    e.add_argument("-f", "--fold", required=True, metavar="FOLD", help="the fold (0, 1, ... or all)")
    e.add_argument("-o", "--output", required=True, metavar="DIR", help="the adapter folder to write")
    e.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", metavar="NAME",
                   help="the fold's checkpoint file (default checkpoint_final.pth)")
    e.set_defaults(func=run_extract)
    a = actions.add_parser("apply", help="write the full nnU-Net checkpoint of BASE_CKPT + ADAPTER_DIR",
                           description="Rebuild the fold of ADAPTER_DIR on BASE_CKPT (the checkpoint it was trained "
                                       "from, checked by SHA-256) and write its full nnU-Net checkpoint with the "
                                       "adapters merged (trainer nnUNetTrainer).")
    a.add_argument("base", metavar="BASE_CKPT", help="the pretrained checkpoint the adapters were trained on")
    a.add_argument("adapter_dir", metavar="ADAPTER_DIR", help="a folder written by adapters extract")
    a.add_argument("-o", "--output", required=True, metavar="CKPT", help="the checkpoint file to write")
    a.add_argument("--overwrite", action="store_true", help="replace an existing CKPT")
    a.set_defaults(func=run_apply)


def run_extract(args: argparse.Namespace) -> int:
    from nnunet_transfer.export.adapters import extract_adapters

    out = extract_adapters(args.model_folder, args.fold, args.output, checkpoint_name=args.checkpoint)
    print(f"wrote {out} (adapter_config.json, adapter_model.safetensors)")
    return 0


def run_apply(args: argparse.Namespace) -> int:
    from nnunet_transfer.export.adapters import apply_adapters

    out = apply_adapters(args.base, args.adapter_dir, args.output, overwrite=args.overwrite)
    print(f"wrote {out} (adapters merged; a plain nnU-Net checkpoint)")
    return 0
