"""``nnunet-transfer export``: one fold of a trained model's network to TorchScript or ONNX, verified first.

Exit codes: 0 written; 1 refused (the export's weights or outputs do not match the checkpoint, or the exporter
failed); 2 unusable input (no such model folder, fold, checkpoint or format, the ONNX extra missing, an existing
output without --overwrite). Nothing is written unless the exit code is 0.
"""

from __future__ import annotations

import argparse

from nnunet_transfer.errors import TransferError

__all__ = ["register", "run"]

_FORMATS = ("torchscript", "onnx")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export one fold of a trained model (the network only) to TorchScript or ONNX, verified",
        description="Rebuild the network of MODEL_FOLDER's fold from plans.json with that fold's checkpoint (deep "
                    "supervision off), export it, reload the export and compare its tensors with the checkpoint's "
                    "and its outputs with the eager network's; write OUT and OUT.json (what inference needs: "
                    "channels, spacing, patch size, normalisation, labels, transpose, mirroring axes, versions, "
                    "the checkpoint's sha256) only when they agree. The export is the network only: no "
                    "preprocessing, sliding window, test-time mirroring or resampling.")
    p.add_argument("model_folder", metavar="MODEL_FOLDER",
                   help="nnU-Net's Trainer__Plans__Configuration folder (as for nnUNetv2_predict_from_modelfolder -m)")
    p.add_argument("-f", "--fold", required=True, help="the fold to export: 0, 1, ... or all")
    p.add_argument("--format", required=True, metavar="{torchscript,onnx}",
                   help="torchscript (torch.jit.load) or onnx (needs: pip install 'nnunet-transfer[onnx]')")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the export's file; its JSON is OUT.json")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", metavar="NAME",
                   help="checkpoint file name in the fold folder (default checkpoint_final.pth)")
    p.add_argument("-tr", "--trainer", default=None, metavar="NAME",
                   help="trainer class whose network to build (default: the checkpoint's, as nnU-Net's predictor "
                        "does); for a model whose trainer is not installed here, e.g. nnUNetTrainer for a subclass "
                        "that keeps nnU-Net's network (the weights are still checked tensor by tensor)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT and OUT.json if they exist")
    p.add_argument("--rtol", type=float, default=None, metavar="RTOL",
                   help="tolerance: max|export - eager| <= RTOL * max|eager| for each test input (default 1e-4)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    fmt = str(args.format).lower()
    if fmt not in _FORMATS:
        raise TransferError(f"--format {args.format!r}: unknown format; choose torchscript or onnx")
    if args.rtol is not None and not args.rtol > 0:
        raise TransferError(f"--rtol {args.rtol}: give a positive tolerance, e.g. 1e-4")
    from nnunet_transfer.export import DEFAULT_RTOL, export_model

    export_model(args.model_folder, args.fold, fmt, args.output, checkpoint_name=args.checkpoint,
                 overwrite=args.overwrite, rtol=args.rtol or DEFAULT_RTOL, echo=print, trainer=args.trainer)
    return 0
