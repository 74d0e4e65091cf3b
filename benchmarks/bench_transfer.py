"""Transfer gain at an equal iteration budget, on synthetic data, with the stock nnU-Net CLI.

1. a source dataset (1 mm isotropic) and a small target dataset (1x1x3 mm, other contrast, few cases);
2. pretrain on the source with a short stock trainer;
3. on the target, with the same number of iterations each:
   * ``default recipe``: ``nnUNetTrainerAdaptiveFT -pretrained_weights`` on the target's own plans, with the shipped
     default recipe (frozen encoder, then progressive unfreezing deepest-first, warmup, encoder at 0.1x) scaled to
     the budget by ``Recipe.scaled``;
   * ``stock fine-tuning``: the stock trainer with ``-pretrained_weights`` on plans moved from the checkpoint
     (``nnunet-transfer plans``; the stock loader needs identical networks) and stock hyperparameters;
   * ``from scratch``: the stock trainer on the target's own plans;
   * with ``--lora``, ``LoRA``: ``nnUNetTrainerAdaptiveFT_LoRA -pretrained_weights`` on the target's own plans, the
     shipped lora recipe (rank-8 adapters on the encoder, decoder and heads fully) on the same budget (peft extra).
4. every run on each of nnU-Net's five folds (each fold: its own training cases and validation cases); print each
   arm's validation Dice per fold, its mean, and the per-fold difference of the default recipe to the others.

    python benchmarks/bench_transfer.py --pretrain-epochs 60 --epochs 40 --iters 5 --folds 0 1 2 3 4
    python benchmarks/bench_transfer.py --lora     # the same, with the LoRA arm
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
        self.num_val_iterations_per_epoch = 2
'''

def _run(cmd: list[str], env: dict[str, str]) -> None:
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    print(f"  {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))}  ({time.time() - start:.0f} s)",
          flush=True)


def _dice(folder: Path, fold: int) -> float:
    summary = folder / f"fold_{fold}" / "validation" / "summary.json"
    return json.loads(summary.read_text())["foreground_mean"]["Dice"]


def _mean_sd(values: list[float], signed: bool = False) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{'+' if signed else ''}.3f} +- {sd:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-epochs", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--target-cases", type=int, default=10)
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--lora", action="store_true", help="add the LoRA arm (nnUNetTrainerAdaptiveFT_LoRA)")
    args = ap.parse_args()

    import yaml

    from nnunet_transfer.core.schedules.recipes import load_recipe
    from nnunet_transfer.demo.synthetic import make_dataset

    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    bindir = Path(sys.executable).parent
    (root / "trainers").mkdir()
    (root / "trainers" / "bench_trainers.py").write_text(
        TRAINERS.format(pretrain_epochs=args.pretrain_epochs, epochs=args.epochs, iters=args.iters))
    recipe = load_recipe("default").scaled(args.epochs).model_copy(
        update={"iterations_per_epoch": args.iters, "val_iterations_per_epoch": 2})
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True)))
    lora = load_recipe("lora").scaled(args.epochs).model_copy(
        update={"iterations_per_epoch": args.iters, "val_iterations_per_epoch": 2})
    (root / "lora.yaml").write_text(yaml.safe_dump(lora.model_dump(mode="json", exclude_none=True)))
    env = dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_def_n_proc="2", nnUNet_n_proc_DA="2",
               nnUNet_compile="false", nnUNet_extTrainer=str(root / "trainers"))
    make_dataset(root / "raw", 960, "Source", num_cases=10, shape=(32, 32, 32), spacing=(1, 1, 1), seed=0)
    make_dataset(root / "raw", 961, "Target", num_cases=args.target_cases, shape=(12, 32, 32), spacing=(3, 1, 1),
                 seed=1, channel_names={"0": "T2"})
    print(f"budget: pretrain {args.pretrain_epochs}x{args.iters} iterations; each target run {args.epochs}x"
          f"{args.iters} iterations; folds {args.folds}", flush=True)
    print(f"default recipe at this budget: frozen encoder until epoch {recipe.progressive.start_epoch}, then one "
          f"stage every {recipe.progressive.every} epoch(s), warmup {recipe.warmup_epochs}", flush=True)
    train = str(bindir / "nnUNetv2_train")
    _run([str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", "960", "961", "-c", "3d_fullres", "-npfp", "2",
          "-np", "2"], env)
    _run([train, "960", "3d_fullres", "0", "-tr", "nnUNetTrainer_BenchPretrain", "-device", "cpu"], env)
    ckpt = root / "results" / "Dataset960_Source" / "nnUNetTrainer_BenchPretrain__nnUNetPlans__3d_fullres" / \
        "fold_0" / "checkpoint_final.pth"
    results = root / "results" / "Dataset961_Target"
    _run([str(bindir / "nnunet-transfer"), "plans", "--from", str(ckpt), "-t", "961", "-tp", "MovedPlans"], env)

    recipe_env = dict(env, NNUNET_TRANSFER_RECIPE=str(root / "recipe.yaml"))
    arms = {
        "default recipe (AdaptiveFT, own plans)": (
            ["-tr", "nnUNetTrainerAdaptiveFT", "-pretrained_weights", str(ckpt)], recipe_env,
            results / "nnUNetTrainerAdaptiveFT__nnUNetPlans__3d_fullres"),
        "stock fine-tuning (moved plans)": (
            ["-p", "MovedPlans", "-tr", "nnUNetTrainer_BenchFT", "-pretrained_weights", str(ckpt)], env,
            results / "nnUNetTrainer_BenchFT__MovedPlans__3d_fullres"),
        "stock from scratch (own plans)": (
            ["-tr", "nnUNetTrainer_BenchFT"], env, results / "nnUNetTrainer_BenchFT__nnUNetPlans__3d_fullres"),
    }
    if args.lora:
        arms["LoRA r8 (AdaptiveFT_LoRA, own plans)"] = (
            ["-tr", "nnUNetTrainerAdaptiveFT_LoRA", "-pretrained_weights", str(ckpt)],
            dict(env, NNUNET_TRANSFER_RECIPE=str(root / "lora.yaml")),
            results / "nnUNetTrainerAdaptiveFT_LoRA__nnUNetPlans__3d_fullres")
    dice: dict[str, list[float]] = {name: [] for name in arms}
    for fold in args.folds:
        for name, (extra, arm_env, folder) in arms.items():
            _run([train, "961", "3d_fullres", str(fold), *extra, "-device", "cpu"], arm_env)
            dice[name].append(_dice(folder, fold))
        print("  fold", fold, "  ".join(f"{d[-1]:.3f}" for d in dice.values()), flush=True)

    print(f"pretrained source model: validation Dice {_dice(ckpt.parent.parent, 0):.3f}")
    print(f"{'':40s} " + " ".join(f"fold {f:<2d}" for f in args.folds) + "   mean +- sd")
    for name, values in dice.items():
        print(f"{name:40s} " + " ".join(f"{v:7.3f}" for v in values) + f"   {_mean_sd(values)}")
    default, *others = dice
    for other in others:
        diff = [a - b for a, b in zip(dice[default], dice[other], strict=True)]
        wins = sum(d >= 0 for d in diff)
        print(f"default recipe - {other}: per fold {' '.join(f'{d:+.3f}' for d in diff)}; "
              f"mean {_mean_sd(diff, signed=True)}; default >= other on {wins}/{len(diff)} folds")
    tmp.cleanup()

if __name__ == "__main__":
    main()
