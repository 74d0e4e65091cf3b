"""Shared fixtures: small real nnU-Net networks, and an isolated nnU-Net environment for the CLI tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
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


@pytest.fixture
def unet_factory():
    """Build small real nnU-Net networks (see :func:`make_unet`)."""
    return make_unet


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


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Workspace:
    """Datasets 900 (source, 1 channel, isotropic), 901 (anisotropic 1x1x3 mm, other labels), 902 (2 channels),
    903 (2 channels and anisotropic).

    Planned and preprocessed with ``nnUNetv2_plan_and_preprocess`` and a source model pretrained on 900 with a
    short stock trainer (``nnUNetv2_train``); about 1.5 minutes on 2 cores.
    """
    from nnunet_transfer.synthetic import make_dataset

    ws = Workspace(tmp_path_factory.mktemp("nnunet"))
    raw = ws.root / "raw"
    make_dataset(raw, ws.SOURCE, "Src", shape=(32, 32, 32), spacing=(1, 1, 1), seed=0)
    make_dataset(raw, ws.ANISO, "Aniso", shape=(12, 32, 32), spacing=(3, 1, 1), seed=1,
                 labels={"background": 0, "lesion": 1, "vessel": 2})
    make_dataset(raw, ws.TWO_CH, "TwoCh", shape=(32, 32, 32), spacing=(1, 1, 1), seed=2,
                 channel_names={"0": "T1", "1": "T2"})
    make_dataset(raw, ws.ANISO_TWO_CH, "AnisoTwoCh", shape=(12, 32, 32), spacing=(3, 1, 1), seed=3,
                 channel_names={"0": "T1", "1": "FLAIR"}, labels={"background": 0, "edema": 1, "lesion": 2})
    run([bin_path("nnUNetv2_plan_and_preprocess"), "-d", str(ws.SOURCE), str(ws.ANISO), str(ws.TWO_CH), str(ws.ANISO_TWO_CH),
         "-c", "3d_fullres", "-npfp", "2", "-np", "2"], ws.env)
    ws.train(ws.SOURCE, ws.TINY, "0")
    ws.checkpoint = ws.results("Dataset900_Src", ws.TINY) / "fold_0" / "checkpoint_final.pth"
    assert ws.checkpoint.is_file()
    return ws
