"""Shared test helpers: small real nnU-Net networks, an isolated nnU-Net environment, the stock CLI as subprocesses."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

TESTS = Path(__file__).resolve().parent
USER_TRAINERS = TESTS / "ext_trainers"


def make_unet(
    input_channels: int = 1,
    num_classes: int = 3,
    kernels: Sequence[Sequence[int]] = ((3, 3, 3), (3, 3, 3), (3, 3, 3)),
    strides: Sequence[Sequence[int]] = ((1, 1, 1), (2, 2, 2), (2, 2, 2)),
    features: Sequence[int] = (4, 8, 16),
    residual: bool = False,
    seed: int = 0,
    norm: type[nn.Module] = nn.InstanceNorm3d,
) -> nn.Module:
    """A small PlainConvUNet / ResidualEncoderUNet with nnU-Net's default building blocks and deep supervision."""
    torch.manual_seed(seed)
    cls = ResidualEncoderUNet if residual else PlainConvUNet
    blocks = {"n_blocks_per_stage": [1] * len(features)} if residual else {"n_conv_per_stage": [2] * len(features)}
    return cls(
        input_channels=input_channels,
        n_stages=len(features),
        features_per_stage=list(features),
        conv_op=nn.Conv3d,
        kernel_sizes=[list(k) for k in kernels],
        strides=[list(s) for s in strides],
        num_classes=num_classes,
        n_conv_per_stage_decoder=[1] * (len(features) - 1),
        conv_bias=True,
        norm_op=norm,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=True,
        **blocks,
    )


def nnunet_env(root: Path, **extra: str) -> dict[str, str]:
    """Environment for stock nnUNetv2_* subprocesses: own data folders, 2 workers, no compile, the user's trainers."""
    env = dict(os.environ)
    env.update(
        nnUNet_raw=str(root / "raw"),
        nnUNet_preprocessed=str(root / "preprocessed"),
        nnUNet_results=str(root / "results"),
        nnUNet_def_n_proc="2",
        nnUNet_n_proc_DA="1",
        nnUNet_compile="false",
        OMP_NUM_THREADS="2",
        # a user's own external trainer folder: must keep working beside ours (ours is appended at start-up)
        nnUNet_extTrainer=str(USER_TRAINERS),
        # as in an activated virtual environment
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    env.update(extra)
    return env


def bin_path(name: str) -> str:
    """A console script of the environment the tests run in."""
    return str(Path(sys.executable).parent / name)


def run(cmd: Sequence[str], env: dict[str, str], check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command, capture its output, and on unexpected failure show the tail of it."""
    proc = subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n"
            f"--- stderr ---\n{proc.stderr[-4000:]}"
        )
    return proc



def cli(*args, env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """``nnunet-transfer ARGS`` as a user runs it (this environment's console script)."""
    return run([bin_path("nnunet-transfer"), *map(str, args)], env or dict(os.environ), check=check)


def assert_clean_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    """The CLI failed as it promises: exit ``code``, one message starting with the program's name, no traceback,
    every fragment in it."""
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("nnunet-transfer ")
    for f in fragments:
        assert f in proc.stderr

RECIPES = TESTS / "recipes"


#: nnU-Net's "Epoch N" line at the start of each epoch of a training log
EPOCH_LINE = re.compile(r"^[\d\- :.]+: Epoch (\d+) *$", re.MULTILINE)


def epochs_in_log(log: Path) -> list[int]:
    """The epochs an nnU-Net training log shows starting."""
    return [int(e) for e in EPOCH_LINE.findall(log.read_text())]


def signal_in_epoch(cmd: Sequence[str], env: dict[str, str], fold: Path, epoch: int, send, out: Path,
                    timeout: float = 300) -> tuple[int, Path]:
    """Start the training ``cmd`` (output to ``out``, its own process group), call ``send(proc)`` once its log in
    ``fold`` shows ``epoch`` started, wait for it to end and for every process of its group to be gone; (exit
    status, training log)."""
    import pytest

    with out.open("w") as sink:
        proc = subprocess.Popen(list(cmd), env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        log = None
        while proc.poll() is None and time.monotonic() < deadline:
            log = next(iter(fold.glob("training_log_*.txt")), None)
            if log is not None and epoch in epochs_in_log(log):
                send(proc)
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"epoch {epoch} never started (status {proc.poll()}):\n{out.read_text()[-3000:]}")
        status = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # nothing of the training is left: the data-augmentation workers were shut down, not orphaned
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("processes of the stopped training are still running")
    return status, log




class Workspace:
    """Synthetic raw datasets, planned and preprocessed by the stock CLI, and a source model pretrained on one."""

    SOURCE, ANISO, TWO_CH, ANISO_TWO_CH = 900, 901, 902, 903
    TINY = "nnUNetTrainer_TransferTestTiny"

    def __init__(self, root: Path):
        self.root = root
        self.env = nnunet_env(root)
        self.checkpoint: Path | None = None

    def results(self, dataset: str, trainer: str, plans: str = "nnUNetPlans", conf: str = "3d_fullres") -> Path:
        return self.root / "results" / dataset / f"{trainer}__{plans}__{conf}"

    def train(self, dataset: int, trainer: str, *args: str, env: dict | None = None, check: bool = True):
        return run([bin_path("nnUNetv2_train"), str(dataset), "3d_fullres", *args, "-tr", trainer, "-device", "cpu"],
                   env or self.env, check=check)


def make_plans(dataset_name: str = "Dataset990_Unit", features: Sequence[int] = (4, 8, 16),
               norm_op: str = "torch.nn.modules.instancenorm.InstanceNorm3d") -> dict:
    """A small, valid nnU-Net 2.8 plans dict (3d_fullres only): PlainConvUNet, 3 stages, patch 32^3, batch 2.

    The layout is that of an ``nnUNetPlans.json`` written by nnU-Net's ExperimentPlanner; ``continue_training`` is
    set as ``nnunetv2.run.run_training.get_trainer_from_args`` does before building a trainer.
    """
    n = len(features)
    return {
        "dataset_name": dataset_name,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [32, 32, 32],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [32, 32, 32],
                "median_image_size_in_voxels": [32.0, 32.0, 32.0],
                "spacing": [1.0, 1.0, 1.0],
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                       "force_separate_z": None},
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": {
                        "n_stages": n,
                        "features_per_stage": list(features),
                        "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[3, 3, 3]] * n,
                        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
                        "n_conv_per_stage": [2] * n,
                        "n_conv_per_stage_decoder": [2] * (n - 1),
                        "conv_bias": True,
                        "norm_op": norm_op,
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                        "dropout_op": None,
                        "dropout_op_kwargs": None,
                        "nonlin": "torch.nn.LeakyReLU",
                        "nonlin_kwargs": {"inplace": True},
                    },
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 290.0, "mean": 106.0, "median": 102.0, "min": -13.0, "percentile_00_5": 21.0,
                  "percentile_99_5": 245.0, "std": 39.0}
        },
        "continue_training": False,
    }


def make_dataset_json(labels: dict | None = None) -> dict:
    """A ``dataset.json`` for :func:`make_plans`: one MR channel, background + two labels unless told otherwise."""
    return {"channel_names": {"0": "MR"}, "labels": labels or {"background": 0, "organ": 1, "lesion": 2},
            "numTraining": 2, "file_ending": ".nii.gz", "name": "Unit"}


def trainer_folders(root: Path, plans: dict, dataset_json: dict | None = None) -> dict[str, str]:
    """nnUNet_preprocessed / nnUNet_results under ``root`` for an in-process trainer (``nnunetv2.paths`` reads the
    environment when a path is used, so set these with ``monkeypatch.setenv``). The dataset's preprocessed folder gets
    ``nnUNetPlans.json`` and ``dataset.json`` (for ``get_trainer_from_args``) and one empty ``.b2nd`` file:
    ``nnUNetTrainer.initialize`` infers the dataset class from file endings only and reads no data."""
    import json

    base = root / "preprocessed" / plans["dataset_name"]
    data = base / plans["configurations"]["3d_fullres"]["data_identifier"]
    data.mkdir(parents=True, exist_ok=True)
    (data / "case_000.b2nd").touch()
    stored = {k: v for k, v in plans.items() if k != "continue_training"}
    (base / f"{plans['plans_name']}.json").write_text(json.dumps(stored, indent=1))
    (base / "dataset.json").write_text(json.dumps(dataset_json or make_dataset_json(), indent=1))
    (root / "results").mkdir(exist_ok=True)
    return {"nnUNet_preprocessed": str(root / "preprocessed"), "nnUNet_results": str(root / "results"),
            "nnUNet_compile": "false"}


def build_trainer(root: Path, monkeypatch, cls: type | None = None, continue_training: bool = False,
                  initialize: bool = True, **plans_kwargs):
    """A trainer (default nnUNetTrainerAdaptiveFT) built as ``get_trainer_from_args`` builds it, on CPU, in
    :func:`trainer_folders` under ``root`` (set with ``monkeypatch``); initialized (network, optimizer; no data)
    unless ``initialize`` is False. ``plans_kwargs`` go to :func:`make_plans`."""
    if cls is None:
        from nnunet_transfer.trainers.adaptive_ft import nnUNetTrainerAdaptiveFT as cls
    plans = make_plans(**plans_kwargs)
    plans["continue_training"] = continue_training
    for k, v in trainer_folders(root, plans).items():
        monkeypatch.setenv(k, v)
    trainer = cls(plans, "3d_fullres", 0, make_dataset_json(), torch.device("cpu"))
    if initialize:
        trainer.initialize()
    return trainer
