"""``nnunet-transfer demo``: the whole path on synthetic data, with the stock nnU-Net commands.

1. make a source dataset (1 channel, isotropic) and a target dataset (2 channels, anisotropic 1x1x3 mm, partly
   different labels) in nnU-Net's raw format;
2. ``nnUNetv2_plan_and_preprocess`` both: their own plans differ (kernels, pooling, input channels);
3. pretrain on the source with the stock ``nnUNetTrainer_1epoch``;
4. fine-tune on the target with ``nnUNetv2_train ... -tr nnUNetTrainerAdaptiveFT -pretrained_weights ...``;
5. print the load-report summary and the validation Dice.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from nnunet_transfer.demo.synthetic import make_dataset
from nnunet_transfer.errors import TransferError

__all__ = ["run_demo"]

SOURCE, TARGET = 990, 991


def _bin(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _run(cmd: list[str], env: dict[str, str], log: Path) -> None:
    print(f"$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    start = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise TransferError(f"command failed with exit code {proc.returncode} (log: {log}):\n{tail}")
    print(f"  done in {time.time() - start:.0f} s", flush=True)


def run_demo(workdir: Path, force: bool = False) -> int:
    """Run the demo in ``workdir`` (refuses to touch a non-empty folder unless ``force``); returns 0 on success."""
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
    print(f"nnunet-transfer demo in {workdir} (device {device}; full output in {log})")

    make_dataset(workdir / "raw", SOURCE, "DemoSource", num_cases=6, shape=(32, 32, 32), spacing=(1, 1, 1),
                 labels={"background": 0, "organ": 1, "lesion": 2}, seed=0)
    make_dataset(workdir / "raw", TARGET, "DemoTarget", num_cases=6, shape=(12, 32, 32), spacing=(3, 1, 1),
                 channel_names={"0": "T1", "1": "T2"}, labels={"background": 0, "edema": 1, "lesion": 2}, seed=1)
    print("made synthetic datasets: source (1 channel, 1 mm isotropic), target (2 channels, 1x1x3 mm)")

    _run([_bin("nnUNetv2_plan_and_preprocess"), "-d", str(SOURCE), str(TARGET), "-c", "3d_fullres",
          "-npfp", "2", "-np", "2"], env, log)
    _run([_bin("nnUNetv2_train"), str(SOURCE), "3d_fullres", "0", "-tr", "nnUNetTrainer_1epoch",
          "-device", device], env, log)
    checkpoint = (workdir / "results" / f"Dataset{SOURCE}_DemoSource" / "nnUNetTrainer_1epoch__nnUNetPlans__3d_fullres"
                  / "fold_0" / "checkpoint_final.pth")
    env["NNUNET_TRANSFER_RECIPE"] = "quick"
    _run([_bin("nnUNetv2_train"), str(TARGET), "3d_fullres", "0", "-tr", "nnUNetTrainerAdaptiveFT",
          "-pretrained_weights", str(checkpoint), "-device", device], env, log)

    fold = (workdir / "results" / f"Dataset{TARGET}_DemoTarget" / "nnUNetTrainerAdaptiveFT__nnUNetPlans__3d_fullres"
            / "fold_0")
    report = json.loads((fold / "pretrained_load_report.json").read_text())
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    adapted = [t for t in report["tensors"] if t["status"] == "adapted"]
    print()
    print(report["summary"])
    for t in adapted:
        print(f"  adapted {t['key']}: {t['reason']}")
    dice = {k: v["Dice"] for k, v in summary["mean"].items()}
    print(f"validation Dice of the fine-tuned model: mean {summary['foreground_mean']['Dice']:.3f} "
          f"(per label value: {', '.join(f'{k}: {v:.3f}' for k, v in dice.items())})")
    print(f"report: {fold / 'pretrained_load_report.json'}")
    return 0


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
