"""Shared by the trainer benchmarks: a synthetic dataset planned and preprocessed by the stock CLI, and a trainer
built in a worker process the way nnU-Net builds it (CPU unless told otherwise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DATASET", "FULL_FT", "NO_WEIGHTS", "build_trainer", "prepare_dataset", "start_epoch0"]

DATASET_ID, DATASET = 950, "Dataset950_Bench"
NO_WEIGHTS = "pretrained: {required: false}\n"  # timing only: random weights train as fast as pretrained ones
FULL_FT = "name: bench_full\n" + NO_WEIGHTS  # no phases, nnU-Net's settings: nothing frozen


def prepare_dataset(root: Path, shape: Sequence[int], num_cases: int = 5) -> dict[str, str]:
    """Make, plan and preprocess the synthetic dataset (3d_fullres) under ``root``; returns the environment for the
    workers (nnU-Net's folders under ``root``, no compile, data augmentation in the main process). Prints the plan."""
    from nnunet_transfer.demo.synthetic import make_dataset

    env = dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_def_n_proc="2", nnUNet_n_proc_DA="1",
               nnUNet_compile="false")
    make_dataset(root / "raw", DATASET_ID, "Bench", num_cases=num_cases, shape=tuple(shape), spacing=(1, 1, 1))
    subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c",
                    "3d_fullres", "-npfp", "2", "-np", "2"], env=env, check=True, capture_output=True)
    conf = json.loads((root / "preprocessed" / DATASET / "nnUNetPlans.json").read_text())["configurations"]
    print(f"patch {conf['3d_fullres']['patch_size']}, batch {conf['3d_fullres']['batch_size']}")
    # the timed steps share the cores with nothing: data augmentation in the main process, batches drawn beforehand
    env["nnUNet_n_proc_DA"] = "0"
    return env


def build_trainer(root: str | Path, trainer_name: str, recipe: str | None, tag: str, device: str = "cpu",
                  threads: int = 2):
    """The trainer ``nnUNetv2_train 950 3d_fullres 0 -tr trainer_name`` would build (``recipe``: the YAML text of
    its recipe, written under ``root`` as ``{tag}.yaml``), fold 0, not yet started."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    torch.set_num_threads(threads)
    if recipe:
        path = Path(root) / f"{tag}.yaml"
        path.write_text(recipe)
        os.environ["NNUNET_TRANSFER_RECIPE"] = str(path)
    pre = Path(root) / "preprocessed" / DATASET
    plans = load_json(str(pre / "nnUNetPlans.json"))
    plans["continue_training"] = False
    cls = recursive_find_trainer_class_by_name(trainer_name)
    return cls(plans=plans, configuration="3d_fullres", fold=0, dataset_json=load_json(str(pre / "dataset.json")),
               device=torch.device(device))


def start_epoch0(trainer) -> None:
    """Start training as nnU-Net's ``run_training`` does, up to the first training epoch (trainable groups and rates
    of epoch 0 set); a long nominal run so that the rates hardly decay while timing."""
    trainer.num_epochs = 1000
    trainer.on_train_start()
    trainer.on_epoch_start()  # the epoch's start timestamp, then the training epoch
    trainer.on_train_epoch_start()
