"""Train ``nnUNetTrainerAdaptiveFT`` with DDP on 2 CPU processes (gloo), the way ``nnunetv2.run.run_training.run_ddp``
does on GPUs (which hard-codes NCCL and CUDA): trainer from ``get_trainer_from_args``, pretrained weights through
``maybe_load_checkpoint``, then ``run_training``. Each rank saves its final weights; rank 0 also the loaded ones.

    python ddp_harness.py DATASET CHECKPOINT OUT_DIR [--no-rewrap-after-first] [--trainer NAME]

``--no-rewrap-after-first`` is the control: the wrapper is built once for the frozen encoder and never again, as when
``requires_grad`` is edited by hand after DDP was built.
"""

import argparse
import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

        from nnunet_transfer.core.loading.loader import unwrap_network

        if args.no_rewrap_after_first:
            import nnunet_transfer.trainers.adaptive_ft as ft

            # the wrapper nnU-Net builds at initialize (the engine has frozen the encoder by then) is never rebuilt
            ft.rewrap_ddp = lambda ddp: ddp

        trainer = get_trainer_from_args(args.dataset, "3d_fullres", 0, args.trainer, "nnUNetPlans",
                                        device=torch.device("cpu"))
        maybe_load_checkpoint(trainer, False, False, args.checkpoint)
        out = Path(args.out)
        if rank == 0:
            torch.save(unwrap_network(trainer.network).state_dict(), out / "loaded.pt")
        trainer.run_training()
        assert isinstance(trainer.network, torch.nn.parallel.DistributedDataParallel), type(trainer.network)
        torch.save(unwrap_network(trainer.network).state_dict(), out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--no-rewrap-after-first", action="store_true")
    ap.add_argument("--trainer", default="nnUNetTrainerAdaptiveFT")
    args = ap.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(2, port, args), nprocs=2, join=True)


if __name__ == "__main__":
    sys.exit(main())
