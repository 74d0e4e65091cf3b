"""Campaign overhead: ``nnunet-transfer campaign run`` vs the same stock commands run by a plain shell script
(issue 10: goal overhead <= 3%).

Makes a synthetic dataset, plans and preprocesses it once (shared by every run), writes a "pretrained" checkpoint
(a network built from the dataset's own plans: the load is what matters, not what it learned) and a short recipe.
Each round runs, in fresh results folders and alternating the order (ABBA), the campaign (fine-tune arm, ``--folds``
folds, local executor) and a shell script holding exactly the commands the campaign's ``--dry-run`` lists for a
fresh results folder (the compatibility check, then ``nnUNetv2_train`` per fold). Printed: the wall time of each
run, the medians and the ratio campaign / shell script, in wall time and in CPU time (user + system of the whole
process tree: steadier than wall time when other work shares the cores).

    python benchmarks/bench_campaign.py --folds 2 --epochs 2 --iters 10 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench_trainer import DATASET, DATASET_ID, prepare_dataset

BIN = Path(sys.executable).parent


def _checkpoint(root: Path) -> Path:
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from nnunet_transfer.nnunet.networks import build_network

    pre = root / "preprocessed" / DATASET
    net = build_network(load_json(str(pre / "nnUNetPlans.json")), "3d_fullres", load_json(str(pre / "dataset.json")))
    path = root / "pretrained.pth"
    torch.save({"network_weights": net.state_dict()}, path)
    return path


def _campaign_file(root: Path, tag: str, checkpoint: Path, recipe: Path, folds: int) -> Path:
    path = root / f"{tag}.yaml"
    path.write_text(f"name: {tag}\npretrained: {checkpoint}\ntrainer: nnUNetTrainerAdaptiveFT\nrecipe: {recipe}\n"
                    f"plans: own\nconfigurations: [3d_fullres]\nfolds: {list(range(folds))}\n"
                    f"targets:\n  - dataset: {DATASET_ID}\nexecutor: {{kind: local}}\ndevice: cpu\n")
    return path


def _dry_run_commands(campaign: Path, env: dict[str, str]) -> list[str]:
    out = subprocess.run([str(BIN / "nnunet-transfer"), "campaign", "run", str(campaign), "--dry-run"], env=env,
                         capture_output=True, text=True, check=True).stdout
    lines = out.split("a run would now start:\n", 1)[1].splitlines()
    cmds = [line.split(": ", 1)[1] for line in lines if line.startswith("  ")]
    assert cmds, out
    return cmds


def _timed(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """Wall time and CPU time (user + system of the command and every process it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--patch", type=int, default=32)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_campaign_") as tmp:
        root = Path(tmp)
        env = prepare_dataset(root, (args.patch,) * 3)
        env["nnUNet_n_proc_DA"] = "1"
        checkpoint = _checkpoint(root)
        recipe = root / "bench.yaml"
        recipe.write_text(f"name: bench\nnum_epochs: {args.epochs}\niterations_per_epoch: {args.iters}\n"
                          "val_iterations_per_epoch: 2\npretrained: {min_coverage: 0.5}\n")
        print(f"{args.folds} folds x {args.epochs} epochs x {args.iters} iterations, fine-tune arm, local executor")
        times: dict[str, list[float]] = {"campaign": [], "shell": []}
        cpu: dict[str, list[float]] = {"campaign": [], "shell": []}
        for r in range(args.rounds):
            for arm in ("shell", "campaign", "campaign", "shell") if r % 2 == 0 else ("campaign", "shell", "shell",
                                                                                       "campaign"):
                tag = f"{arm}{len(times[arm])}"
                run_env = {**env, "nnUNet_results": str(root / f"results_{tag}")}
                campaign = _campaign_file(root, tag, checkpoint, recipe, args.folds)
                if arm == "campaign":
                    cmd = [str(BIN / "nnunet-transfer"), "campaign", "run", str(campaign)]
                else:
                    script = root / f"{tag}.sh"
                    script.write_text("set -e\n" + "\n".join(_dry_run_commands(campaign, run_env)) + "\n")
                    cmd = ["bash", str(script)]
                seconds, cpu_seconds = _timed(cmd, run_env, root / f"{tag}.log")
                times[arm].append(seconds)
                cpu[arm].append(cpu_seconds)
                print(f"  {arm:8s} {seconds:7.1f} s wall, {cpu_seconds:7.1f} s CPU", flush=True)
        for what, values in (("wall", times), ("CPU", cpu)):
            c, s = statistics.median(values["campaign"]), statistics.median(values["shell"])
            print(f"median {what}: campaign {c:.1f} s, shell script {s:.1f} s; campaign / shell = {c / s:.3f} "
                  f"(overhead {100 * (c / s - 1):+.1f}%)")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
