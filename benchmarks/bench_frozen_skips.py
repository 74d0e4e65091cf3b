"""Frozen skips (recipe ``split_frozen_skips``): training-step time and memory with the encoder frozen, with and
without splitting the decoder convolutions over ``cat(upsampled, skip)``, vs nothing frozen, on CPU.

Makes a synthetic dataset, plans and preprocesses it with the stock CLI (48^3 cases: patch 48^3, batch 2), builds
nnUNetTrainerAdaptiveFT as nnU-Net does, draws a few batches, and then, in ONE process on the same batches, cycles
through the modes in alternating order (``--rounds`` rounds of ``--iters`` timed ``train_step`` calls each):

* ``nothing_frozen``: every group trains (nothing to split);
* ``encoder_frozen`` / ``encoder_frozen_split``: decoder and heads train, the whole encoder is frozen;
* ``half_frozen`` / ``half_frozen_split``: progressive unfreezing half way: the deeper half of the encoder stages
  trains too, the shallower half (whose skips feed the high-resolution decoder stages) is still frozen.

Memory is the training step's peak RSS above the RSS before it, measured the same way in a second process (the
kernel's peak counter is reset before each measured step, and large blocks go straight back to the system there, so
modes do not inherit each other's peaks; the timed process allocates as usual).
Also printed: the process's CPU time per step (steadier than wall time when other work shares the cores), and the
floating-point operations of one training step per mode (``torch.utils.flop_counter``): their ratio is the time
ratio a machine would reach if every operation cost the same, a floor that skipping wasted work cannot go below.
Target: encoder frozen (split) / nothing frozen <= 0.65 in time.

    python benchmarks/bench_frozen_skips.py --rounds 3 --iters 4
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_trainer import NO_WEIGHTS, build_trainer, prepare_dataset, start_epoch0

MODES = ("nothing_frozen", "encoder_frozen", "encoder_frozen_split", "half_frozen", "half_frozen_split")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def _step_memory_mb(step) -> float:
    """Peak RSS during ``step()`` above the RSS before it (Linux: /proc/self/clear_refs resets the peak)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_mb("VmRSS")
    step()
    return _status_mb("VmHWM") - before


def worker(root: str, rounds: int, iters: int, threads: int, memory_only: bool) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from nnunet_transfer.core.schedules.schedule import apply_freeze
    from nnunet_transfer.core.schedules.skips import disable_skip_split, split_skip_convs, update_skip_split

    trainer = build_trainer(root, "nnUNetTrainerAdaptiveFT", "name: bench_skips\n" + NO_WEIGHTS, "bench_skips",
                            threads=threads)
    start_epoch0(trainer)
    groups = [g.name for g in trainer.param_groups]
    stages = sorted(int(g.rsplit("stage", 1)[1]) for g in groups if g.startswith("encoder.stage"))
    deep = {f"encoder.stage{i}" for i in stages[len(stages) // 2:]}
    trainable = {
        "nothing_frozen": groups,
        "encoder_frozen": [g for g in groups if not g.startswith("encoder.")],
        "half_frozen": [g for g in groups if not g.startswith("encoder.") or g in deep],
    }
    batches = [next(trainer.dataloader_train) for _ in range(3)]
    times: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    memory: dict[str, list[float]] = {m: [] for m in MODES}
    flops: dict[str, int] = {}
    split: dict[str, list[str]] = {}
    for r in range(rounds):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            apply_freeze(trainer.param_groups, trainable[mode.removesuffix("_split")])
            if mode.endswith("_split"):
                update_skip_split(trainer.network)
            else:
                disable_skip_split(trainer.network)
            split[mode] = split_skip_convs(trainer.network)
            trainer.train_step(batches[0])  # warm-up after the change
            if memory_only:
                memory[mode].append(_step_memory_mb(lambda: trainer.train_step(batches[0])))
                if r == 0:  # the arithmetic of the step: what a faster machine cannot beat
                    with FlopCounterMode(display=False) as counter:
                        trainer.train_step(batches[0])
                    flops[mode] = counter.get_total_flops()
                continue
            for i in range(iters):
                start, start_cpu = time.perf_counter(), time.process_time()
                trainer.train_step(batches[i % len(batches)])
                times[mode].append(time.perf_counter() - start)
                cpu[mode].append(time.process_time() - start_cpu)
    if memory_only:
        print(json.dumps({"memory": {m: statistics.median(v) for m, v in memory.items()}, "flops": flops}))
    else:
        print(json.dumps({"time": {m: statistics.median(v) for m, v in times.items()},
                          "cpu": {m: statistics.median(v) for m, v in cpu.items()},
                          "split": split, "encoder_stages": len(stages)}))
    os._exit(0)  # skip the dataloaders' shutdown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--shape", type=int, nargs=3, default=[48, 48, 48])
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 on a busy machine: steadier)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.rounds, args.iters, args.threads, args.memory_only)
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = prepare_dataset(root, tuple(args.shape))  # prints the patch and batch size
        print(f"{args.rounds} rounds x {args.iters} timed iterations per mode, {args.threads} thread(s), one "
              "process, modes alternating on the same batches")
        res = {}
        # augmentation in the main process (n_proc_DA 0). Memory in a second process whose large blocks are mmapped
        # (freed memory leaves the process, so each mode's peak is its own); not the timed one: that costs page faults
        for extra, malloc in (([], {}), (["--memory-only"], {"MALLOC_MMAP_THRESHOLD_": "131072"})):
            out = subprocess.run([sys.executable, __file__, "--worker", str(root), "--rounds", str(args.rounds),
                                  "--iters", str(args.iters), "--threads", str(args.threads), *extra],
                                 env=dict(env, nnUNet_n_proc_DA="0", **malloc), capture_output=True, text=True,
                                 check=False)
            if out.returncode:
                sys.exit(f"worker failed (exit {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            res.update(json.loads(out.stdout.strip().splitlines()[-1]))
    t, c, m, f = res["time"], res["cpu"], res["memory"], res["flops"]
    print(f"encoder stages: {res['encoder_stages']}; split convolutions: "
          + ", ".join(f"{k} {len(v)}" for k, v in res["split"].items()))
    for mode in MODES:
        print(f"{mode:22s} {t[mode]:.3f} s/iteration ({c[mode]:.3f} s CPU), step memory {m[mode]:.0f} MiB")
    base_t, base_m = t["nothing_frozen"], m["nothing_frozen"]
    for frozen in ("encoder_frozen", "half_frozen"):
        print(f"{frozen} / nothing frozen: time {t[frozen] / base_t:.3f} without split, "
              f"{t[frozen + '_split'] / base_t:.3f} with split"
              + (" (target <= 0.65)" if frozen == "encoder_frozen" else "")
              + f"; memory {m[frozen] / base_m:.3f} without, {m[frozen + '_split'] / base_m:.3f} with")
        print(f"{frozen}: split / no split: time {t[frozen + '_split'] / t[frozen]:.3f}, "
              f"memory {m[frozen + '_split'] / m[frozen]:.3f}")
        print(f"  floating-point operations of the step (the floor for any machine): {frozen} / nothing frozen "
              f"{f[frozen] / f['nothing_frozen']:.3f} without split, {f[frozen + '_split'] / f['nothing_frozen']:.3f} "
              "with")
        print(f"  CPU time (steadier on a busy machine): {frozen} / nothing frozen "
              f"{c[frozen] / c['nothing_frozen']:.3f} without split, "
              f"{c[frozen + '_split'] / c['nothing_frozen']:.3f} with; split / no split "
              f"{c[frozen + '_split'] / c[frozen]:.3f}")


if __name__ == "__main__":
    main()
