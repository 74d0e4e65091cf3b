"""The classification example's parts: its synthetic volumes, its tiny pretrained checkpoint, its command line."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from nnunet_transfer.cli import main
from nnunet_transfer.encoders import load_encoder
from nnunet_transfer.encoders.demo import make_shapes, pretrain_checkpoint, tiny_plans


def test_shapes_are_balanced_and_say_nothing_by_their_size():
    images, labels, masks = make_shapes(40, 20, seed=1, channels=2)
    assert images.shape == (40, 2, 20, 20, 20) and images.dtype == np.float32 and masks.shape == (40, 20, 20, 20)
    assert labels.sum() == 20 and images.min() >= 1  # positive, as nnU-Net's crop to non-zero expects
    assert set(np.unique(masks[labels == 0])) == {0, 1} and set(np.unique(masks[labels == 1])) == {0, 2}
    size = (masks > 0).reshape(40, -1).sum(1)
    assert abs(size[labels == 0].mean() - size[labels == 1].mean()) < 0.15 * size.mean()  # same volume per class
    again, _, _ = make_shapes(40, 20, seed=1, channels=2)
    assert np.array_equal(images, again)


def test_the_tiny_pretrained_checkpoint_is_nnunets_format(tmp_path):
    path = pretrain_checkpoint(tmp_path / "ck" / "checkpoint_final.pth", steps=2, num_volumes=4, echo=lambda s: None)
    ck = torch.load(path, weights_only=True)
    plans, dj = tiny_plans()
    assert ck["init_args"]["plans"] == plans and ck["init_args"]["dataset_json"] == dj
    assert ck["trainer_name"] == "nnUNetTrainer" and ck["init_args"]["configuration"] == "3d_fullres"
    bundle = load_encoder(path, features="all")
    assert bundle.channels == (8, 16, 32) and bundle.report.coverage == 1.0


def test_command_line_errors_are_one_line(tmp_path, capsys):
    assert main(["classify-demo", "--checkpoint", str(tmp_path / "nope.pth")]) == 2
    assert capsys.readouterr().err == f"nnunet-transfer classify-demo: error: {tmp_path / 'nope.pth'}: checkpoint file not found\n"
    with pytest.raises(SystemExit) as e:
        main(["classify-demo", "--epochs", "0"])
    assert e.value.code == 2 and "--epochs: must be at least 1, got 0" in capsys.readouterr().err
    # a 2d checkpoint: the demo makes 3d volumes
    plans, dj = tiny_plans()
    two_d = copy.deepcopy(plans["configurations"]["3d_fullres"])
    two_d.update(patch_size=[20, 20], spacing=[1.0, 1.0])
    two_d["architecture"]["arch_kwargs"].update(conv_op="torch.nn.modules.conv.Conv2d", kernel_sizes=[[3, 3]] * 3,
                                                strides=[[1, 1], [2, 2], [2, 2]],
                                                norm_op="torch.nn.modules.instancenorm.InstanceNorm2d")
    plans["configurations"]["2d"] = two_d
    from nnunet_transfer.nnunet.networks import build_network

    torch.save({"network_weights": build_network(plans, "2d", dj).state_dict(),
                "init_args": {"plans": plans, "configuration": "2d", "dataset_json": dj}}, tmp_path / "2d.pth")
    assert main(["classify-demo", "--checkpoint", str(tmp_path / "2d.pth")]) == 2
    assert "configuration 2d is 2d; the demo makes 3d volumes, give a 3d checkpoint" in capsys.readouterr().err
