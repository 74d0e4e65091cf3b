"""``nnunet-transfer classify-demo``: a sphere/cube classifier on a pretrained nnU-Net encoder vs random init."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register", "run"]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _stages(text: str) -> str | list[int]:
    if text in ("deepest", "all"):
        return text
    try:
        return [int(i) for i in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: 'deepest', 'all' or stage indices such as 1,2") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classify-demo",
        help="train a classifier (sphere or cube?) on a pretrained encoder and from random init on the same budget",
        description="Synthetic 3d volumes holding a sphere or a cube; an EncoderClassifier trained with the "
                    "'classifier' recipe (head first, then the encoder at 0.1x with warmup) on the encoder of "
                    "CHECKPOINT, and on the same encoder randomly initialised, with the same seeds and budget. "
                    "Without --checkpoint a tiny PlainConvUNet is pretrained first (about a minute in all on 2 CPU "
                    "cores).")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="a pretrained nnU-Net checkpoint (3d configuration); default: pretrain a tiny one here")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the tiny pretrained checkpoint in this folder (default: a temporary folder)")
    p.add_argument("--epochs", type=_positive, default=6, help="classifier epochs (default 6)")
    p.add_argument("--iterations", type=_positive, default=6, help="iterations per epoch (default 6)")
    p.add_argument("--batch-size", type=_positive, default=8, help="volumes per iteration (default 8)")
    p.add_argument("--train", type=_positive, default=64, help="training volumes (default 64)")
    p.add_argument("--test", type=_positive, default=128, help="held-out volumes (default 128)")
    p.add_argument("--pretrain-steps", type=_positive, default=80,
                   help="steps of the tiny pretraining without --checkpoint (default 80)")
    p.add_argument("--stages", type=_stages, default="all",
                   help="encoder stages pooled by the classifier: deepest, all (default) or indices such as 1,2")
    p.add_argument("--lr", type=float, default=1e-2, help="base learning rate (default 0.01; the encoder gets 0.1x)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, initialisation and batches (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nnunet_transfer.encoders.demo import run_classify_demo
    from nnunet_transfer.errors import CheckpointError

    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise CheckpointError(f"{args.checkpoint}: checkpoint file not found")
    run_classify_demo(args.checkpoint, workdir=args.workdir, num_train=args.train, num_test=args.test,
                      epochs=args.epochs, iterations=args.iterations, batch_size=args.batch_size, base_lr=args.lr,
                      pretrain_steps=args.pretrain_steps, stages=args.stages, seed=args.seed)
    return 0
