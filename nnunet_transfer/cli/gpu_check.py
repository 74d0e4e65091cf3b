"""``nnunet-transfer gpu-check``: the trainers on this machine's CUDA device in minutes (see
:mod:`nnunet_transfer.gpucheck`). Exit codes: 0 done (the table printed, the JSON written), 2 unusable input (no CUDA
device, a non-empty work folder without --force), 1 a step failed (the log's tail is printed)."""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gpu-check", help="train, predict and export on this machine's GPU with the stock CLI; one table of times, "
                          "memory and ratios (about 5 minutes)",
        description="Make the demo's synthetic datasets, plan and preprocess them, pretrain briefly, then measure "
                    "with the stock nnUNetv2_train, alternating the runs: stock nnUNetTrainer against "
                    "nnUNetTrainerAdaptiveFT with nothing frozen, encoder frozen with and without the frozen-skip "
                    "split, and the same with nnUNet_compile; then the load report's coverage, nnUNetv2_predict and "
                    "a verified ONNX export. Prints one table and writes JSON.")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cuda (default); cpu only for a smoke run with --tiny")
    p.add_argument("--budget-s", type=float, default=300.0, metavar="S",
                   help="time for the whole check (default 300): iterations and rounds are chosen to fit")
    p.add_argument("--tiny", action="store_true", help="tiny datasets and runs (the test suite's smoke run on a CPU)")
    p.add_argument("--rounds", type=int, default=None, metavar="N",
                   help="at most N rounds of runs, alternating their order (default 3; 1 with --tiny)")
    p.add_argument("--no-compile", action="store_true", help="leave out the runs with nnUNet_compile=true")
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="folder for data, runs and the log (default: a temporary folder)")
    p.add_argument("--force", action="store_true", help="delete a previous check in --workdir first")
    p.add_argument("--json", default=None, metavar="FILE", help="write the result here (default WORKDIR/gpucheck.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nnunet_transfer.gpucheck import run_gpu_check

    run_gpu_check(args.workdir, device=args.device, budget_s=args.budget_s, tiny=args.tiny, rounds=args.rounds,
                  compile_runs=False if args.no_compile else None, json_path=args.json, force=args.force)
    return 0
