"""``nnunet-transfer share``: a copy of a fine-tuned model that plain nnU-Net (without this package) predicts with.

Exit codes: 0 written; 1 refused (an ambiguous model: checkpoints naming different trainers); 2 unusable input (not
a model folder, a missing fold or configuration, a network plain nnU-Net cannot rebuild, an existing output without
--overwrite). Nothing is written unless the exit code is 0; the model folders given are only read.
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "share", help="copy a fine-tuned model folder as a plain nnU-Net model (a folder, or a zip to install)",
        description="Write a copy of MODEL_FOLDER that the stock nnUNetv2_predict, nnUNetv2_find_best_configuration "
                    "and nnUNetv2_ensemble use without nnunet-transfer: each checkpoint names the nnU-Net trainer "
                    "whose network it holds (nnUNetTrainer for ours), init_args and plans.json lose this package's "
                    "keys, the folder is named <StockTrainer>__<Plans>__<Configuration>; reports, LR tables and "
                    "recipes stay as documentation, with nnunet_transfer_share.json recording what changed. A "
                    "trainer that builds its own architecture is refused.")
    p.add_argument("model_folders", nargs="+", metavar="MODEL_FOLDER",
                   help="a Trainer__Plans__Configuration folder, or a DatasetXXX_Name results folder (all its model "
                        "folders, see -c)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="a results root (the copy goes to OUT/DatasetXXX_Name/...), or with --zip the zip file")
    p.add_argument("-c", "--configurations", nargs="+", metavar="CONF", default=None,
                   help="only these configurations (default: every model folder given)")
    p.add_argument("-f", "--folds", nargs="+", metavar="FOLD", default=None,
                   help="only these folds: 0 1 ... or all (default: every fold present)")
    p.add_argument("-tr", "--trainer", default=None, metavar="NAME",
                   help="the trainer whose network the checkpoints hold, where theirs is not installed here (e.g. "
                        "nnUNetTrainer for a subclass that keeps nnU-Net's network; every fold's weights must still "
                        "load strictly into it)")
    p.add_argument("--zip", action="store_true",
                   help="write OUT as a zip for nnUNetv2_install_pretrained_model_from_zip (the layout of "
                        "nnUNetv2_export_model_to_zip: no validation predictions)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing copy (or zip) at OUT")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nnunet_transfer.export.share import share_models

    result = share_models(args.model_folders, args.output, configurations=args.configurations, folds=args.folds,
                          zip=args.zip, overwrite=args.overwrite, trainer=args.trainer)
    print(result.describe())
    return 0
