"""Pretrained encoders from a stock-trained checkpoint, and one image preprocessed as nnUNetv2_plan_and_preprocess
wrote it (the session workspace)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture
def ws_env(workspace, monkeypatch):
    """The workspace's nnU-Net folders and trainer search path for in-process calls."""
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        monkeypatch.setenv(key, workspace.env[key])
    return workspace


def _preprocessed(folder, case: str) -> np.ndarray:
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    data, _, _, _ = nnUNetDatasetBlosc2(str(folder), [case]).load_case(case)
    return np.asarray(data[:])


def test_encoder_of_a_stock_trained_checkpoint(ws_env):
    from nnunet_transfer.encoders import EncoderClassifier, load_encoder

    ws = ws_env
    bundle = load_encoder(ws.checkpoint, features="all")
    assert bundle.trainer == ws.TINY and bundle.configuration == "3d_fullres" and bundle.fold == 0
    assert bundle.report.passed and bundle.report.coverage == 1.0
    weights = torch.load(ws.checkpoint, weights_only=False)["network_weights"]
    for name, value in bundle.encoder.state_dict().items():
        assert torch.equal(value, weights[bundle.encoder.source_name(name)]), name
    patch = bundle.preprocessing.patch_size
    x = torch.randn(1, 1, *patch)
    with torch.no_grad():
        feats = bundle.encoder(x)
    assert [tuple(f.shape[1:]) for f in feats] == bundle.encoder.feature_shapes(patch)
    assert [f.shape[1] for f in feats] == list(bundle.channels)
    clf = EncoderClassifier(bundle, 2)
    assert clf(torch.randn(2, 1, *patch)).shape == (2, 2)
    # the same from nnU-Net's model folder and the fold (its plans.json and dataset.json)
    folder = ws.results("Dataset900_Src", ws.TINY)
    again = load_encoder(folder, fold=0, features="all")
    assert again.source == ws.checkpoint and again.trainer == ws.TINY
    assert all(torch.equal(v, weights[again.encoder.source_name(k)]) for k, v in again.encoder.state_dict().items())


def test_one_raw_image_preprocessed_as_nnunet_preprocessed_it(ws_env):
    """The 2-channel anisotropic dataset (3 x 1 x 1 mm, resampled) and the source dataset through the bundle."""
    from nnunet_transfer.encoders import load_encoder, preprocess_image

    ws = ws_env
    pre = ws.root / "preprocessed" / "Dataset903_AnisoTwoCh"
    raw = ws.root / "raw" / "Dataset903_AnisoTwoCh" / "imagesTr"
    files = [raw / "anisotwoch_001_0000.nii.gz", raw / "anisotwoch_001_0001.nii.gz"]
    ours = preprocess_image(files, pre / "nnUNetPlans.json", "3d_fullres", pre / "dataset.json")
    theirs = _preprocessed(pre / "nnUNetPlans_3d_fullres", "anisotwoch_001")
    assert ours.shape == theirs.shape and ours.shape[0] == 2
    np.testing.assert_array_equal(ours, theirs)

    bundle = load_encoder(ws.checkpoint)
    src = ws.root / "raw" / "Dataset900_Src" / "imagesTr" / "src_002_0000.nii.gz"
    np.testing.assert_array_equal(bundle.preprocess(src),
                                  _preprocessed(ws.root / "preprocessed" / "Dataset900_Src" / "nnUNetPlans_3d_fullres",
                                                "src_002"))
