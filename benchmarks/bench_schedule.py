"""Per-iteration time and peak memory of nnUNetTrainerAdaptiveFT's schedules vs the stock nnUNetTrainer, on CPU.

Makes a synthetic dataset, plans and preprocesses it with the stock CLI, then runs each configuration in its own
fresh process (alternating, ``--rounds`` rounds): the trainer is built as nnU-Net builds it, a few batches are drawn
from its dataloader, and ``train_step`` is timed on them (data loading excluded). Printed: median seconds per
iteration and the training-step memory (peak RSS during the steps minus RSS before them), and the ratios:

* AdaptiveFT with nothing frozen / stock nnUNetTrainer: time (target <= 1.02), per training step and with the
  per-epoch bookkeeping (end-of-epoch logging and progress plot, start of the next epoch) spread over 250 iterations;
* encoder frozen / nothing frozen: time (target <= 0.75) and memory (target <= 0.85); the time also in one process,
  switching the freeze back and forth on the same batches (``alternating``).

    python benchmarks/bench_schedule.py --rounds 2 --iters 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench_trainer import FULL_FT, NO_WEIGHTS, build_trainer, prepare_dataset, start_epoch0

CONFIGS = {
    "stock": ("nnUNetTrainer", None),
    "adaptive_nothing_frozen": ("nnUNetTrainerAdaptiveFT", FULL_FT),
    "adaptive_encoder_frozen": ("nnUNetTrainerAdaptiveFT", "name: bench_frozen\n" + NO_WEIGHTS + "phases:\n"
                                "  - {start_epoch: 0, unfreeze: ['decoder.*', 'heads']}\n"),
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def alternating_worker(trainer, iters: int) -> None:
    """Encoder frozen vs nothing frozen in one process on the same batches, in interleaved blocks: the tightest
    side-by-side comparison (no difference between processes in memory layout or thread placement)."""
    from nnunet_transfer.core.schedules.schedule import apply_freeze
    from nnunet_transfer.core.schedules.skips import update_skip_split

    everything = [g.name for g in trainer.param_groups]
    decoder_and_heads = [n for n in everything if not n.startswith("encoder.")]
    batches = [next(trainer.dataloader_train) for _ in range(3)]
    times: dict[str, list[float]] = {"nothing_frozen": [], "encoder_frozen": []}
    block = max(2, iters // 4)
    for b in range(4):
        for mode in ("nothing_frozen", "encoder_frozen") if b % 2 == 0 else ("encoder_frozen", "nothing_frozen"):
            apply_freeze(trainer.param_groups, everything if mode == "nothing_frozen" else decoder_and_heads)
            update_skip_split(trainer.network)  # as the trainer does after each freeze change
            trainer.train_step(batches[0])  # warm-up after the change
            for i in range(block):
                start = time.perf_counter()
                trainer.train_step(batches[i % len(batches)])
                times[mode].append(time.perf_counter() - start)
    print(json.dumps({k: statistics.median(v) for k, v in times.items()}))
    os._exit(0)


def worker(config: str, root: str, iters: int) -> None:
    import torch

    trainer_name, recipe = CONFIGS["adaptive_nothing_frozen" if config == "alternating" else config]
    trainer = build_trainer(root, trainer_name, recipe, config)
    start_epoch0(trainer)
    if config == "alternating":
        alternating_worker(trainer, iters)
    batches = [next(trainer.dataloader_train) for _ in range(3)]
    trainer.train_step(batches[0])  # warm-up
    rss_before = _rss_mb()
    times, outputs = [], []
    for i in range(iters):
        start = time.perf_counter()
        outputs.append(trainer.train_step(batches[i % len(batches)]))
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # the per-epoch bookkeeping around the steps: end of epoch (logs, progress.png) and start of the next one
    trainer.disable_checkpointing = True  # same for both trainers; a disk write only adds noise
    trainer.on_train_epoch_end(outputs)
    with torch.no_grad():
        trainer.on_validation_epoch_start()
        trainer.on_validation_epoch_end([trainer.validation_step(next(trainer.dataloader_val))])
    start = time.perf_counter()
    trainer.on_epoch_end()
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    epoch_overhead = time.perf_counter() - start
    trainable = sum(p.numel() for p in trainer.network.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.network.parameters())
    print(json.dumps({"time": statistics.median(times), "epoch_overhead": epoch_overhead,
                      "step_mem_mb": peak - rss_before, "peak_mb": peak,
                      "trainable_fraction": trainable / total}))
    os._exit(0)  # skip the dataloaders' shutdown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--shape", type=int, nargs=3, default=[48, 48, 48])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.root, args.iters)
        return

    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    env = prepare_dataset(root, args.shape)
    print(f"{args.iters} timed iterations per run, {args.rounds} rounds")
    order = [*CONFIGS, "alternating"]
    results: dict[str, list[dict]] = {c: [] for c in order}
    for r in range(args.rounds):
        for config in order if r % 2 == 0 else order[::-1]:
            out = subprocess.run([sys.executable, __file__, "--worker", config, "--root", str(root), "--iters",
                                  str(args.iters)], env=env, capture_output=True,
                                 text=True, check=False)
            if out.returncode:
                sys.exit(f"worker {config} failed (exit {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            results[config].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {c: {k: statistics.median(x[k] for x in v) for k in v[0]} for c, v in results.items()}
    for c in CONFIGS:
        m = med[c]
        print(f"{c:24s} {m['time']:.3f} s/iteration, {m['epoch_overhead']:.2f} s/epoch bookkeeping, "
              f"step memory {m['step_mem_mb']:.0f} MiB (peak RSS "
              f"{m['peak_mb']:.0f} MiB), trainable {m['trainable_fraction']:.3f}")
    a, s, f = med["adaptive_nothing_frozen"], med["stock"], med["adaptive_encoder_frozen"]
    print(f"time AdaptiveFT (nothing frozen) / stock: {a['time'] / s['time']:.3f} (target <= 1.02)")
    # nnU-Net's epochs have 250 iterations: the bookkeeping (progress plot, schedule panel, logs) spread over them
    per_it = {c: med[c]["time"] + med[c]["epoch_overhead"] / 250 for c in CONFIGS}
    print(f"time per iteration incl. per-epoch bookkeeping at 250 iterations/epoch, AdaptiveFT / stock: "
          f"{per_it['adaptive_nothing_frozen'] / per_it['stock']:.3f}")
    print(f"time encoder frozen / nothing frozen: {f['time'] / a['time']:.3f} (target <= 0.75)")
    alt = med["alternating"]
    print(f"time encoder frozen / nothing frozen, one process alternating on the same batches: "
          f"{alt['encoder_frozen'] / alt['nothing_frozen']:.3f} ({alt['encoder_frozen']:.3f} vs "
          f"{alt['nothing_frozen']:.3f} s/iteration; per round: "
          + " ".join(f"{x['encoder_frozen'] / x['nothing_frozen']:.3f}" for x in results["alternating"]) + ")")
    print(f"step memory encoder frozen / nothing frozen: {f['step_mem_mb'] / a['step_mem_mb']:.3f} (target <= 0.85)")
    print(f"peak RSS encoder frozen / nothing frozen: {f['peak_mb'] / a['peak_mb']:.3f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
