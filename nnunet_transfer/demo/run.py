"""``nnunet-transfer demo``: the whole path on synthetic data, with the stock nnU-Net commands.

1. make a source dataset (1 channel, isotropic) and a target dataset (2 channels, anisotropic 1x1x3 mm, partly
   different labels) in nnU-Net's raw format;
2. ``nnUNetv2_plan_and_preprocess`` both: their own plans differ (kernels, pooling, input channels);
3. pretrain on the source with the stock ``nnUNetTrainer_1epoch``;
4. fine-tune on the target with ``nnUNetv2_train ... -tr nnUNetTrainerAdaptiveFT -pretrained_weights ...``;
5. print the load-report summary and the validation Dice by label name;
6. with ``baseline``, train the target from scratch on the same budget and print both Dice lines and the difference.

While nnU-Net runs, its output goes to ``workdir/demo.log`` and the console shows one line per epoch (and a heartbeat
when nothing happens for a while): see :mod:`nnunet_transfer.demo.progress`.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import shutil
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import yaml

from nnunet_transfer.core.commands import console_script
from nnunet_transfer.core.io import write_text_atomic
from nnunet_transfer.core.loading.report import REPORT_FILE
from nnunet_transfer.core.schedules.recipes import RECIPE_ENV_VAR, Recipe, load_recipe
from nnunet_transfer.demo.dice import foreground_names, format_dice, format_dice_comparison
from nnunet_transfer.demo.progress import StepProgress
from nnunet_transfer.demo.synthetic import make_dataset
from nnunet_transfer.errors import TransferError

__all__ = ["run_demo", "run_step"]

SOURCE, TARGET = 990, 991
SOURCE_LABELS = {"background": 0, "organ": 1, "lesion": 2}
TARGET_LABELS = {"background": 0, "edema": 1, "lesion": 2}
RECIPE = "quick"
TRAINER = "nnUNetTrainerAdaptiveFT"
NNUNET_ITERATIONS = 250  # nnUNetTrainer.num_iterations_per_epoch (nnUNetTrainer_1epoch keeps it)
_EOF = b""


def _pump(stream: IO[bytes], lines: queue.Queue[bytes]) -> None:
    for raw in iter(stream.readline, _EOF):
        lines.put(raw)
    lines.put(_EOF)


def run_step(cmd: Sequence[str], env: dict[str, str], log: Path, progress: StepProgress,
             poll: float = 0.5, drain: float = 10.0) -> None:
    """Run ``cmd``: its output goes line by line to ``log`` and through ``progress`` to the console.

    Raises TransferError with the exit code, the log's tail and its path when the command fails. ``drain``: seconds
    to wait, after the command exits, for processes it left behind to close the output pipe.
    """
    for line in progress.begin(cmd):
        print(line, flush=True)
    env = {**env, "PYTHONUNBUFFERED": "1"}  # line by line through the pipe, not in 8 kB blocks
    with open(log, "ab") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n".encode())
        f.flush()
        proc = subprocess.Popen(list(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        exited_at: float | None = None
        try:
            while True:
                try:
                    raw = lines.get(timeout=poll)
                except queue.Empty:
                    raw = None
                if raw == _EOF:
                    break
                out: list[str] = []
                if raw is not None:
                    f.write(raw)
                    f.flush()
                    out = progress.feed(raw.decode(errors="replace"))
                out += progress.tick()  # also while lines stream in that show no progress (warnings...)
                for line in out:
                    print(line, flush=True)
                if proc.poll() is not None:
                    exited_at = exited_at if exited_at is not None else progress.clock()
                    if progress.clock() - exited_at > drain:
                        break
        finally:
            if proc.poll() is None:  # interrupted (Ctrl-C): do not leave nnU-Net running
                proc.terminate()
            returncode = proc.wait()
    if returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise TransferError(f"[{progress.step}] command failed with exit code {returncode} (log: {log}):\n{tail}")
    for line in progress.done():
        print(line, flush=True)


def _scratch_recipe(recipe: Recipe, path: Path) -> Path:
    """``recipe`` without pretrained weights (same epochs, iterations, rates), written to ``path``."""
    data: dict[str, Any] = recipe.model_dump(mode="json", exclude={"source"})
    data["name"] = f"{recipe.name}_from_scratch"
    data["description"] = f"{recipe.name} without pretrained weights: the demo's --baseline"
    data["pretrained"]["required"] = False
    data["pretrained"]["checkpoint"] = None
    return write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))


def _fold(results: Path) -> Path:
    return results / f"Dataset{TARGET}_DemoTarget" / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_0"


def run_demo(workdir: Path, force: bool = False, baseline: bool = False) -> int:
    """Run the demo in ``workdir`` (refuses to touch a non-empty folder unless ``force``); returns 0 on success.

    ``baseline``: also train the target from scratch on the same budget (same trainer and recipe, no pretrained
    weights; results in ``workdir/results_scratch``) and compare the validation Dice.
    """
    workdir = workdir.resolve()
    if workdir.exists() and any(workdir.iterdir()):
        if not force:
            raise TransferError(f"{workdir}: exists and is not empty; pass --force to delete it and start over")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(nnUNet_raw=str(workdir / "raw"), nnUNet_preprocessed=str(workdir / "preprocessed"),
               nnUNet_results=str(workdir / "results"))
    env.setdefault("nnUNet_def_n_proc", "2")
    env.setdefault("nnUNet_n_proc_DA", "2")
    env.setdefault("nnUNet_compile", "false")
    log = workdir / "demo.log"
    device = "cuda" if _has_cuda() else "cpu"
    recipe = load_recipe(RECIPE)
    budget = f"{recipe.num_epochs} epochs x {recipe.iterations_per_epoch} iterations"
    print(f"nnunet-transfer demo in {workdir} (device {device}; full output in {log})")
    print(f"fine-tuning recipe {RECIPE}: {budget}" + ("; then the same budget from scratch (--baseline)"
                                                      if baseline else ""))

    make_dataset(workdir / "raw", SOURCE, "DemoSource", num_cases=6, shape=(32, 32, 32), spacing=(1, 1, 1),
                 labels=SOURCE_LABELS, seed=0)
    make_dataset(workdir / "raw", TARGET, "DemoTarget", num_cases=6, shape=(12, 32, 32), spacing=(3, 1, 1),
                 channel_names={"0": "T1", "1": "T2"}, labels=TARGET_LABELS, seed=1)
    print("made synthetic datasets: source (1 channel, 1 mm isotropic), target (2 channels, 1x1x3 mm)")

    run_step([console_script("nnUNetv2_plan_and_preprocess"), "-d", str(SOURCE), str(TARGET), "-c", "3d_fullres",
              "-npfp", "2", "-np", "2"], env, log, StepProgress("preprocess", log))
    run_step([console_script("nnUNetv2_train"), str(SOURCE), "3d_fullres", "0", "-tr", "nnUNetTrainer_1epoch",
              "-device", device], env, log,
             StepProgress("pretrain", log, total_epochs=1, label_names=foreground_names(SOURCE_LABELS),
                          budget=f"1 epoch x {NNUNET_ITERATIONS} iterations"))
    checkpoint = (workdir / "results" / f"Dataset{SOURCE}_DemoSource" / "nnUNetTrainer_1epoch__nnUNetPlans__3d_fullres"
                  / "fold_0" / "checkpoint_final.pth")
    env[RECIPE_ENV_VAR] = RECIPE
    target_names = foreground_names(TARGET_LABELS)
    run_step([console_script("nnUNetv2_train"), str(TARGET), "3d_fullres", "0", "-tr", TRAINER,
              "-pretrained_weights", str(checkpoint), "-device", device], env, log,
             StepProgress("fine-tune", log, total_epochs=recipe.num_epochs, label_names=target_names, budget=budget))
    if baseline:
        scratch_env = {**env, "nnUNet_results": str(workdir / "results_scratch"),
                       RECIPE_ENV_VAR: str(_scratch_recipe(recipe, workdir / f"{RECIPE}_from_scratch.yaml"))}
        run_step([console_script("nnUNetv2_train"), str(TARGET), "3d_fullres", "0", "-tr", TRAINER, "-device", device],
                 scratch_env, log,
                 StepProgress("scratch", log, total_epochs=recipe.num_epochs, label_names=target_names,
                              budget=f"{budget}, no pretrained weights"))

    fold = _fold(workdir / "results")
    report = json.loads((fold / REPORT_FILE).read_text())
    labels = json.loads((workdir / "raw" / f"Dataset{TARGET}_DemoTarget" / "dataset.json").read_text())["labels"]
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    adapted = [t for t in report["tensors"] if t["status"] == "adapted"]
    print()
    print(report["summary"])
    for t in adapted:
        print(f"  adapted {t['key']}: {t['reason']}")
    print(f"validation Dice of the fine-tuned model: {format_dice(summary, labels)}")
    if baseline:
        scratch = json.loads((_fold(workdir / "results_scratch") / "validation" / "summary.json").read_text())
        print(f"validation Dice on the same budget ({budget}):")
        for line in format_dice_comparison([("fine-tuned from the source", summary), ("from scratch", scratch)],
                                           labels):
            print(line)
    print(f"report: {fold / 'pretrained_load_report.json'}")
    print(f"full output: {log}")
    return 0


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
