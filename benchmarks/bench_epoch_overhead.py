"""Per-epoch time of nnUNetTrainerAdaptiveFT with nothing frozen vs the stock nnUNetTrainer, and the per-epoch
bookkeeping (issue 14: target AdaptiveFT / stock <= 1.01 at 15 iterations per epoch).

Makes a synthetic dataset (cases of ``--patch`` voxels), plans and preprocesses it with the stock CLI, then runs
each trainer in its own fresh process, alternating the order every round, for every ``--iters`` value. A worker
builds the trainer as nnU-Net does, starts training (``on_train_start``), draws a few batches beforehand (data
augmentation excluded: it is the same for both and only adds noise), and runs epochs through nnU-Net's hooks as
``run_training`` does: one warm-up epoch, then ``--epochs`` timed ones, each from ``on_epoch_start`` to the end of
``on_epoch_end`` (checkpoint writing off for both). Each epoch's schedule panel is drawn in the background while the
next epoch trains, so every timed epoch carries one panel (the warm-up epoch's in the first); the last panel is
waited for at the end, as ``on_train_end`` does (printed apart: once per training). Printed, medians over rounds x
epochs:

* seconds per epoch of each trainer and the ratio AdaptiveFT / stock, per ``--iters``;
* the bookkeeping on the training loop per epoch: nnU-Net's own ``on_epoch_end`` (its log lines, progress.png)
  vs ours (what AdaptiveFT's ``on_epoch_end`` adds to nnU-Net's, plus ``_log_schedule``: log line, lr_table.json);
* the schedule panel drawn off the loop, in the background thread: wall and CPU seconds per epoch.

    python benchmarks/bench_epoch_overhead.py --iters 15 250 --rounds 3 --epochs 3 --patch 48

On a CPU every iteration at a 48^3 patch takes seconds: 250 iterations per epoch is a long run (use a GPU:
``--device cuda``). The ratio at 250 iterations is the one nnU-Net's default epoch sees.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench_trainer import FULL_FT, build_trainer, prepare_dataset

CONFIGS = {"stock": ("nnUNetTrainer", None), "adaptive": ("nnUNetTrainerAdaptiveFT", FULL_FT)}


def worker(config: str, root: str, iters: int, epochs: int, val_iters: int, device: str) -> None:
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    trainer_name, recipe = CONFIGS[config]
    trainer = build_trainer(root, trainer_name, recipe, config, device=device)
    trainer.num_epochs = 1000
    trainer.num_iterations_per_epoch = iters
    trainer.num_val_iterations_per_epoch = val_iters
    trainer.disable_checkpointing = True

    timed: dict[str, list[float]] = {"own": [], "log_schedule": [], "panel_wall": [], "panel_cpu": []}

    def timing(key: str, fn, cpu_key: str | None = None):
        def wrapper(*args, **kwargs):
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                timed[key].append(time.perf_counter() - start)
                if cpu_key:
                    timed[cpu_key].append(time.thread_time() - cpu)
        return wrapper

    # nnU-Net's own on_epoch_end is what AdaptiveFT's calls through super(); the stock trainer's is it
    nnUNetTrainer.on_epoch_end = timing("own", nnUNetTrainer.on_epoch_end)
    adaptive = config == "adaptive"
    if adaptive:
        trainer._log_schedule = timing("log_schedule", trainer._log_schedule)
        trainer._panel.add_to = timing("panel_wall", trainer._panel.add_to, "panel_cpu")

    trainer.on_train_start()
    batches = [next(trainer.dataloader_train) for _ in range(3)]
    val_batch = next(trainer.dataloader_val)
    epoch_times, end_times = [], []
    for _ in range(1 + epochs):
        start = time.perf_counter()
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        outputs = [trainer.train_step(batches[i % len(batches)]) for i in range(iters)]
        trainer.on_train_epoch_end(outputs)
        with torch.no_grad():
            trainer.on_validation_epoch_start()
            trainer.on_validation_epoch_end([trainer.validation_step(val_batch) for _ in range(val_iters)])
        end_start = time.perf_counter()
        trainer.on_epoch_end()
        epoch_times.append(time.perf_counter() - start)
        end_times.append(time.perf_counter() - end_start)
    start = time.perf_counter()
    if adaptive:  # the last panel, waited for as on_train_end does: once per training, not per epoch
        trainer._wait_for_panel()
    final_wait = time.perf_counter() - start
    log_schedule = timed["log_schedule"] or [0.0] * len(end_times)
    ours = [end - own + log for end, own, log in zip(end_times, timed["own"], log_schedule, strict=True)]
    print(json.dumps({"epoch": epoch_times[1:], "own": timed["own"][1:], "ours": ours[1:],  # without the warm-up
                      "panel_wall": timed["panel_wall"][1:], "panel_cpu": timed["panel_cpu"][1:],
                      "final_wait": [final_wait]}))
    sys.stdout.flush()
    os._exit(0)  # skip the dataloaders' shutdown


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, nargs="+", default=[15, 250], help="training iterations per epoch")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each trainer per --iters value (alternating)")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per run (after one warm-up epoch)")
    ap.add_argument("--val-iters", type=int, default=5, help="validation iterations per epoch")
    ap.add_argument("--patch", type=int, nargs="+", default=[48], help="case shape (one value: a cube); nnU-Net "
                    "plans its patch from it (printed)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.root, args.iters[0], args.epochs, args.val_iters, args.device)
        return
    shape = args.patch * 3 if len(args.patch) == 1 else args.patch

    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    env = prepare_dataset(root, shape)
    print(f"{args.rounds} rounds x {args.epochs} timed epochs per trainer, {args.val_iters} validation iterations "
          f"per epoch, device {args.device}")
    results: dict[tuple[int, str], list[dict]] = {(i, c): [] for i in args.iters for c in CONFIGS}
    for r in range(args.rounds):
        for iters in args.iters:
            for config in list(CONFIGS) if r % 2 == 0 else list(CONFIGS)[::-1]:
                out = subprocess.run([sys.executable, __file__, "--worker", config, "--root", str(root), "--iters",
                                      str(iters), "--epochs", str(args.epochs), "--val-iters", str(args.val_iters),
                                      "--device", args.device], env=env, capture_output=True, text=True, check=False)
                if out.returncode:
                    sys.exit(f"worker {config} failed (exit {out.returncode}):\n{out.stdout[-3000:]}\n"
                             f"{out.stderr[-3000:]}")
                results[iters, config].append(json.loads(out.stdout.strip().splitlines()[-1]))

    def pooled(iters: int, config: str, key: str) -> list[float]:
        return [v for run in results[iters, config] for v in run[key]]

    for iters in args.iters:
        stock, ours = _median(pooled(iters, "stock", "epoch")), _median(pooled(iters, "adaptive", "epoch"))
        per_round = [statistics.median(a["epoch"]) / statistics.median(s["epoch"])
                     for a, s in zip(results[iters, "adaptive"], results[iters, "stock"], strict=True)]
        print(f"\n{iters} iterations per epoch: stock {stock:.2f} s/epoch, AdaptiveFT (nothing frozen) {ours:.2f} "
              f"s/epoch; AdaptiveFT / stock {ours / stock:.3f} (target <= 1.01; per round: "
              + " ".join(f"{x:.3f}" for x in per_round) + ")")
        own = _median(pooled(iters, "stock", "own") + pooled(iters, "adaptive", "own"))
        extra = _median(pooled(iters, "adaptive", "ours"))
        print(f"  bookkeeping on the loop per epoch: nnU-Net's on_epoch_end {own:.3f} s, ours (on_epoch_end extra + "
              f"_log_schedule) {extra:.4f} s; ours / nnU-Net's {extra / own:.3f}")
        wall, cpu = _median(pooled(iters, "adaptive", "panel_wall")), _median(pooled(iters, "adaptive", "panel_cpu"))
        print(f"  schedule panel, off the loop (background thread): {wall:.3f} s wall, {cpu:.3f} s CPU per epoch; "
              f"CPU / nnU-Net's on_epoch_end {cpu / own:.3f}; waiting for the last one at the end of training "
              f"{_median(pooled(iters, 'adaptive', 'final_wait')):.3f} s (once)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
