"""The classification example: does a volume hold a sphere or a cube? From a pretrained encoder, and from scratch.

:func:`run_classify_demo` makes synthetic 3d volumes (one object, a sphere or a cube of the same volume, at a random
place and size, with random contrast on a noisy background), preprocesses them with nnU-Net's preprocessor for the
pretrained model's configuration, and trains an :class:`~nnunet_transfer.encoders.EncoderClassifier` twice on the
same budget, with the same seeds, head initialisation and batches: once on the pretrained encoder
(:func:`~nnunet_transfer.encoders.load_encoder`), once on the same encoder randomly initialised. Both follow the
shipped ``classifier`` recipe (head first on the frozen encoder, then the encoder with warmup at 0.1x), scaled to the
budget. Without a checkpoint it first pretrains a tiny PlainConvUNet (nnU-Net's network for small plans) on
segmenting such objects, in process, and saves it in nnU-Net's checkpoint format.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["ArmResult", "ClassifyDemoResult", "make_shapes", "pretrain_checkpoint", "run_classify_demo",
           "tiny_plans"]

CLASSES = ("sphere", "cube")


def make_shapes(n: int, size: tuple[int, int, int] | int = 20, *, seed: int = 0, channels: int = 1,
                anisotropy: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` volumes, half round objects (spheres), half boxes (cubes), shuffled: ``(images (n, channels, *size)
    float32, labels (n,) with 0 = round and 1 = box, masks (n, *size) uint8: 1 inside a round object, 2 inside a
    box)``. A cube has the volume of the sphere it stands for, so size and brightness say nothing about the class;
    contrast, size and position vary; intensities are positive (background
    around 100) as in a scan. ``anisotropy`` > 0 stretches each axis by a random factor within 1 +- anisotropy
    (ellipsoids and cuboids instead of spheres and cubes)."""
    shape = (size,) * 3 if isinstance(size, int) else tuple(size)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    images = np.empty((n, channels, *shape), dtype=np.float32)
    masks = np.empty((n, *shape), dtype=np.uint8)
    smallest = min(shape)
    for k, label in enumerate(labels):
        radius = rng.uniform(0.24, 0.34) * smallest
        axes = radius * (1 + rng.uniform(-anisotropy, anisotropy, 3))
        if label == 1:
            axes = axes * (math.pi / 6) ** (1 / 3)  # half sides of a box with the volume of the ellipsoid
        extent = axes if label == 0 else axes * math.sqrt(3)  # stays inside the volume whatever the centre
        centre = np.array([rng.uniform(e + 1, s - e - 1) if s > 2 * e + 2 else s / 2
                           for e, s in zip(extent, shape, strict=True)])
        offset = (grid - centre.reshape(3, 1, 1, 1)) / axes.reshape(3, 1, 1, 1)
        mask = (offset**2).sum(0) <= 1 if label == 0 else np.abs(offset).max(0) <= 1
        masks[k] = mask * (label + 1)
        for c in range(channels):
            contrast = rng.uniform(30, 60)
            noise = rng.normal(0, rng.uniform(6, 12), shape)
            images[k, c] = np.clip(100 + 10 * c + contrast * mask + noise, 1, None)
    return images, labels.astype(np.int64), masks


def tiny_plans(size: int = 20, features: tuple[int, ...] = (8, 16, 32)) -> tuple[dict[str, Any], dict[str, Any]]:
    """Plans and dataset.json of a tiny 3d PlainConvUNet for ``size``^3 one-channel volumes (nnU-Net 2.8 layout)."""
    n = len(features)
    conf = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 4,
        "patch_size": [size] * 3, "median_image_size_in_voxels": [float(size)] * 3, "spacing": [1.0, 1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n, "features_per_stage": list(features), "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[3, 3, 3]] * n, "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
                "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": False,
    }
    plans = {
        "dataset_name": "Dataset999_ShapesDemo", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0], "original_median_shape_after_transp": [size] * 3,
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": conf}, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 200.0, "mean": 120.0, "median": 120.0, "min": 1.0, "percentile_00_5": 40.0,
                  "percentile_99_5": 180.0, "std": 30.0}},
    }
    dataset_json = {"channel_names": {"0": "synthetic"}, "labels": {"background": 0, "round": 1, "box": 2},
                    "numTraining": 0, "file_ending": ".nii.gz", "name": "ShapesDemo"}
    return plans, dataset_json


def _preprocess(images: np.ndarray, spacing: list[float], plans: Any, configuration: str,
                dataset_json: dict) -> torch.Tensor:
    from nnunet_transfer.encoders.preprocessing import preprocess_array

    return torch.from_numpy(np.stack([preprocess_array(im, spacing, plans, configuration, dataset_json)
                                      for im in images]))


def pretrain_checkpoint(path: str | Path, *, steps: int = 80, size: int = 20, num_volumes: int = 64,
                        anisotropy: float = 0.35, seed: int = 0, echo: Callable[[str], None] = print) -> Path:
    """Pretrain a tiny PlainConvUNet on segmenting round objects and boxes (labels ``round`` and ``box``; ellipsoids
    and cuboids of random proportions, not the demo's spheres and cubes) and save it at ``path`` in nnU-Net's
    checkpoint format (``network_weights``, ``init_args`` with plans, configuration and dataset.json,
    ``trainer_name``). Returns the path."""
    from nnunet_transfer.nnunet.networks import build_network

    plans, dj = tiny_plans(size)
    images, _, masks = make_shapes(num_volumes, size, seed=seed + 1000, anisotropy=anisotropy)
    x = _preprocess(images, [1.0, 1.0, 1.0], plans, "3d_fullres", dj)
    y = torch.from_numpy(masks.astype(np.int64))
    torch.manual_seed(seed)
    net = build_network(plans, "3d_fullres", dj)
    net.decoder.deep_supervision = False
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    start, losses = time.monotonic(), []
    for _ in range(steps):
        idx = torch.randint(0, len(x), (4,), generator=gen)
        logits = net(x[idx])
        prob = logits.softmax(1)[:, 1:]
        target = nn.functional.one_hot(y[idx], 3).movedim(-1, 1)[:, 1:].float()
        axes = (0, 2, 3, 4)  # soft Dice per foreground label over the batch, as nnU-Net's batch Dice
        dice = 1 - ((2 * (prob * target).sum(axes) + 1) / (prob.sum(axes) + target.sum(axes) + 1)).mean()
        loss = nn.functional.cross_entropy(logits, y[idx]) + dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    k = max(1, steps // 10)
    echo(f"[pretrain] loss {np.mean(losses[:k]):.2f} -> {np.mean(losses[-k:]):.2f} in {time.monotonic() - start:.0f} s")
    net.decoder.deep_supervision = True
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "network_weights": net.state_dict(), "optimizer_state": None, "grad_scaler_state": None, "logging": {},
        "_best_ema": None, "current_epoch": steps,
        "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dj,
                      "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2),
    }, path)
    return path


@dataclass
class ArmResult:
    """One training run of the classifier."""

    name: str
    epoch_losses: list[float]  # mean training loss per epoch
    accuracy: float  # on the held-out volumes
    seconds: float
    lr_table: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ClassifyDemoResult:
    pretrained: ArmResult
    random: ArmResult
    checkpoint: Path
    num_train: int
    num_test: int

    def lines(self) -> list[str]:
        p, r = self.pretrained, self.random
        return [
            f"test accuracy on the same budget ({self.num_test} held-out volumes):",
            f"  pretrained encoder:    {p.accuracy:.3f}   (final training loss {p.epoch_losses[-1]:.3f})",
            f"  random initialisation: {r.accuracy:.3f}   (final training loss {r.epoch_losses[-1]:.3f})",
            f"  difference:            {p.accuracy - r.accuracy:+.3f}",
        ]


def _train_arm(name: str, encoder: nn.Module, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor,
               y_test: torch.Tensor, *, epochs: int, iterations: int, batch_size: int, base_lr: float | None,
               seed: int, stages: Any, echo: Callable[[str], None]) -> ArmResult:
    from nnunet_transfer.encoders.classifier import EncoderClassifier
    from nnunet_transfer.encoders.finetune import FineTuning

    torch.manual_seed(seed)  # the same head initialisation in both arms
    model = EncoderClassifier(encoder, len(CLASSES), stages=stages)
    ft = FineTuning(model, "classifier", num_epochs=epochs, base_lr=base_lr)
    gen = torch.Generator().manual_seed(seed)  # the same batches in both arms
    start, epoch_losses = time.monotonic(), []
    for epoch in range(epochs):
        ft.start_epoch(epoch)
        losses = []
        for _ in range(iterations):
            idx = torch.randint(0, len(x), (batch_size,), generator=gen)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            ft.optimizer.zero_grad()
            loss.backward()
            ft.optimizer.step()
            losses.append(loss.item())
        epoch_losses.append(float(np.mean(losses)))
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x_test[i:i + 16]).argmax(1) for i in range(0, len(x_test), 16)])
    acc = float((pred == y_test).float().mean())
    seconds = time.monotonic() - start
    curve = " ".join(f"{v:.2f}" for v in epoch_losses)
    echo(f"[classify] {name}: loss per epoch {curve}; test accuracy {acc:.3f} ({seconds:.0f} s)")
    return ArmResult(name, epoch_losses, acc, seconds, ft.table())


def run_classify_demo(
    checkpoint: str | Path | None = None,
    *,
    workdir: str | Path | None = None,
    num_train: int = 64,
    num_test: int = 128,
    epochs: int = 6,
    iterations: int = 6,
    batch_size: int = 8,
    base_lr: float | None = 1e-2,
    pretrain_steps: int = 80,
    stages: Any = "all",
    seed: int = 0,
    echo: Callable[[str], None] = print,
) -> ClassifyDemoResult:
    """Train the sphere/cube classifier from ``checkpoint`` (pretrained here into ``workdir`` when None; a temporary
    folder when that is None too) and from random initialisation on the same budget; returns both results.

    The volumes match the checkpoint's configuration (3d only): its patch size, channel count and spacing, so that
    nnU-Net's preprocessor (run on every volume) normalises without resampling."""
    from nnunet_transfer.encoders.load import build_encoder, load_encoder
    from nnunet_transfer.errors import PlansError

    with tempfile.TemporaryDirectory(prefix="nnunet_transfer_classify_") as tmp:
        if checkpoint is None:
            folder = Path(workdir) if workdir is not None else Path(tmp)
            checkpoint = folder / "pretrained" / "checkpoint_final.pth"
            echo(f"[pretrain] a tiny PlainConvUNet (3d, features 8-16-32) learns to segment round objects and boxes "
                 f"(ellipsoids, cuboids; labels round, box): {pretrain_steps} steps")
            pretrain_checkpoint(checkpoint, steps=pretrain_steps, seed=seed, echo=echo)
            if workdir is not None:
                echo(f"[pretrain] checkpoint: {checkpoint}")
        bundle = load_encoder(checkpoint, features=stages)
        echo("[encoder] " + bundle.summary().replace("\n", "\n[encoder] "))
        info = bundle.preprocessing
        if bundle.ndim != 3:
            raise PlansError(f"{checkpoint}: configuration {bundle.configuration} is {bundle.ndim}d; the demo makes 3d "
                             "volumes, give a 3d checkpoint")
        backward = [info.transpose_forward.index(i) for i in range(3)]  # nnU-Net's transpose_backward
        size = tuple(info.patch_size[j] for j in backward)  # read order, so that the patch size comes out
        spacing = [info.spacing[j] for j in backward]
        images, labels, _ = make_shapes(num_train + num_test, size, seed=seed, channels=info.num_channels)
        data = _preprocess(images, spacing, bundle.plans, bundle.configuration, bundle.dataset_json)
        y = torch.from_numpy(labels)
        x, x_test, y_train, y_test = data[:num_train], data[num_train:], y[:num_train], y[num_train:]
        schemes = ", ".join(sorted(set(info.normalization_schemes)))
        echo(f"[data] {num_train} training and {num_test} test volumes {'x'.join(map(str, data.shape[2:]))} "
             f"({' / '.join(CLASSES)}), preprocessed by nnU-Net's {info.preprocessor} ({schemes})")
        echo(f"[classify] recipe 'classifier' on {epochs} epochs x {iterations} iterations of {batch_size}: the head "
             f"alone first, then the encoder at 0.1x with warmup; pooled stages: {stages}")
        kw = dict(epochs=epochs, iterations=iterations, batch_size=batch_size, base_lr=base_lr, seed=seed,
                  stages=stages, echo=echo)
        pretrained = _train_arm("pretrained encoder", bundle.encoder, x, y_train, x_test, y_test, **kw)
        torch.manual_seed(seed)
        scratch = build_encoder(bundle.plans, bundle.configuration, bundle.dataset_json, trainer=bundle.trainer)
        random = _train_arm("random init", scratch, x, y_train, x_test, y_test, **kw)
        result = ClassifyDemoResult(pretrained, random, Path(checkpoint), num_train, num_test)
        for line in result.lines():
            echo(line)
        return result
