"""Transfer gain at an equal iteration budget, on synthetic data, with the stock nnU-Net CLI.

1. a source dataset (1 mm isotropic) and a small target dataset (1x1x3 mm, other contrast, few cases);
2. pretrain on the source with a short stock trainer;
3. on the target, with the same number of iterations each:
   * ``default recipe``: ``nnUNetTrainerAdaptiveFT -pretrained_weights`` on the target's own plans, with the default
     recipe's shape (frozen encoder, then progressive unfreezing deepest-first, warmup, encoder at 0.1x) scaled to
     the budget;
   * ``stock fine-tuning``: the stock trainer with ``-pretrained_weights`` on plans moved from the checkpoint
     (``nnunet-transfer plans``; the stock loader needs identical networks) and stock hyperparameters;
   * ``from scratch``: the stock trainer on the target's own plans.
4. print each one's validation Dice (fold 0).

    python benchmarks/bench_transfer.py --pretrain-epochs 12 --epochs 6 --iters 25
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAINERS = '''
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_BenchPretrain(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = {pretrain_epochs}
        self.num_iterations_per_epoch = {iters}
        self.num_val_iterations_per_epoch = 5


class nnUNetTrainer_BenchFT(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = {epochs}
        self.num_iterations_per_epoch = {iters}
        self.num_val_iterations_per_epoch = 5
'''

RECIPE = """name: bench_default
num_epochs: {epochs}
iterations_per_epoch: {iters}
val_iterations_per_epoch: 5
phases:
  - {{start_epoch: 0, unfreeze: ["decoder.*", "heads"]}}
progressive: {{groups: ["encoder.*"], start_epoch: 1, every: 1, order: deepest_first}}
lr_multipliers: {{"encoder.*": 0.1}}
warmup_epochs: 1
"""


def _run(cmd: list[str], env: dict[str, str]) -> None:
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    print(f"  {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))}  ({time.time() - start:.0f} s)",
          flush=True)


def _dice(folder: Path) -> float:
    return json.loads((folder / "fold_0" / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-epochs", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--iters", type=int, default=25)
    ap.add_argument("--target-cases", type=int, default=10)
    args = ap.parse_args()

    from nnunet_transfer.synthetic import make_dataset

    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    bindir = Path(sys.executable).parent
    (root / "trainers").mkdir()
    (root / "trainers" / "bench_trainers.py").write_text(
        TRAINERS.format(pretrain_epochs=args.pretrain_epochs, epochs=args.epochs, iters=args.iters))
    (root / "recipe.yaml").write_text(RECIPE.format(epochs=args.epochs, iters=args.iters))
    env = dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_def_n_proc="2", nnUNet_n_proc_DA="2",
               nnUNet_compile="false", nnUNet_extTrainer=str(root / "trainers"))
    make_dataset(root / "raw", 960, "Source", num_cases=10, shape=(32, 32, 32), spacing=(1, 1, 1), seed=0)
    make_dataset(root / "raw", 961, "Target", num_cases=args.target_cases, shape=(12, 32, 32), spacing=(3, 1, 1),
                 seed=1, channel_names={"0": "T2"})
    print(f"budget: pretrain {args.pretrain_epochs}x{args.iters} iterations; each target run {args.epochs}x"
          f"{args.iters} iterations", flush=True)
    _run([str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", "960", "961", "-c", "3d_fullres", "-npfp", "2",
          "-np", "2"], env)
    _run([str(bindir / "nnUNetv2_train"), "960", "3d_fullres", "0", "-tr", "nnUNetTrainer_BenchPretrain",
          "-device", "cpu"], env)
    ckpt = root / "results" / "Dataset960_Source" / "nnUNetTrainer_BenchPretrain__nnUNetPlans__3d_fullres" / \
        "fold_0" / "checkpoint_final.pth"
    results = root / "results" / "Dataset961_Target"

    recipe_env = dict(env, NNUNET_TRANSFER_RECIPE=str(root / "recipe.yaml"))
    _run([str(bindir / "nnUNetv2_train"), "961", "3d_fullres", "0", "-tr", "nnUNetTrainerAdaptiveFT",
          "-pretrained_weights", str(ckpt), "-device", "cpu"], recipe_env)
    _run([str(bindir / "nnunet-transfer"), "plans", "--from", str(ckpt), "-t", "961", "-tp", "MovedPlans"], env)
    _run([str(bindir / "nnUNetv2_train"), "961", "3d_fullres", "0", "-p", "MovedPlans", "-tr",
          "nnUNetTrainer_BenchFT", "-pretrained_weights", str(ckpt), "-device", "cpu"], env)
    _run([str(bindir / "nnUNetv2_train"), "961", "3d_fullres", "0", "-tr", "nnUNetTrainer_BenchFT",
          "-device", "cpu"], env)

    dice = {
        "default recipe (AdaptiveFT, own plans)": _dice(results / "nnUNetTrainerAdaptiveFT__nnUNetPlans__3d_fullres"),
        "stock fine-tuning (moved plans)": _dice(results / "nnUNetTrainer_BenchFT__MovedPlans__3d_fullres"),
        "stock from scratch (own plans)": _dice(results / "nnUNetTrainer_BenchFT__nnUNetPlans__3d_fullres"),
    }
    print(f"pretrained source model: validation Dice {_dice(ckpt.parent.parent):.3f}")
    for name, d in dice.items():
        print(f"{name:40s} validation Dice {d:.3f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
