"""Shared test helpers: small real nnU-Net networks, an isolated nnU-Net environment, the stock CLI as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
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


RECIPES = TESTS / "recipes"


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
