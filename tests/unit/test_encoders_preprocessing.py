"""Inputs prepared as in pretraining: the plans' preprocessing facts, and one image preprocessed exactly as nnU-Net's
preprocessor does it (transpose, crop, CT and z-score normalisation, resampling to the configuration's spacing)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import make_plans
from test_encoders import save_checkpoint

from nnunet_transfer.encoders import load_encoder, preprocess_array, preprocess_image, preprocessing_info
from nnunet_transfer.errors import PlansError

CT = {"max": 900.0, "mean": 80.0, "median": 70.0, "min": -900.0, "percentile_00_5": -200.0,
      "percentile_99_5": 400.0, "std": 120.0}
MR = {"max": 290.0, "mean": 106.0, "median": 102.0, "min": -13.0, "percentile_00_5": 21.0,
      "percentile_99_5": 245.0, "std": 39.0}


def ct_mr_plans() -> tuple[dict, dict]:
    """Two channels (CT, MR), an anisotropic target spacing and a transposition, as the planner writes them for
    images of 3 x 0.8 x 1 mm (z, y, x): transpose_forward puts the coarse axis first, spacing after transposing."""
    plans = make_plans()
    plans["transpose_forward"], plans["transpose_backward"] = [0, 2, 1], [0, 2, 1]
    conf = plans["configurations"]["3d_fullres"]
    conf.update(spacing=[2.0, 1.0, 1.0], normalization_schemes=["CTNormalization", "ZScoreNormalization"],
                use_mask_for_norm=[False, False], patch_size=[16, 32, 32])
    plans["foreground_intensity_properties_per_channel"] = {"0": CT, "1": MR}
    dataset_json = {"channel_names": {"0": "CT", "1": "T2"}, "labels": {"background": 0, "organ": 1, "lesion": 2},
                    "numTraining": 1, "file_ending": ".nii.gz", "name": "Unit"}
    return plans, dataset_json


@pytest.fixture
def case(tmp_path):
    """A two-channel image (z, y, x) = (10, 30, 24) at 3 x 0.8 x 1 mm, written as nnU-Net's raw files."""
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    files = []
    for c, scale in enumerate((300.0, 60.0)):
        arr = (rng.normal(0, 1, (10, 30, 24)) * scale + 100).astype(np.float32)
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((1.0, 0.8, 3.0))  # SimpleITK's order: x, y, z
        files.append(tmp_path / f"case_000_{c:04d}.nii.gz")
        sitk.WriteImage(img, str(files[-1]))
    return files


def test_the_plans_facts_are_exposed():
    plans, dj = ct_mr_plans()
    info = preprocessing_info(plans, "3d_fullres", dj)
    assert info.spacing == (2.0, 1.0, 1.0) and info.patch_size == (16, 32, 32)
    assert info.normalization_schemes == ("CTNormalization", "ZScoreNormalization")
    assert info.use_mask_for_norm == (False, False)
    assert info.intensity_properties == {"0": CT, "1": MR}
    assert info.channel_names == {"0": "CT", "1": "T2"} and info.num_channels == 2
    assert info.transpose_forward == (0, 2, 1) and info.file_ending == ".nii.gz"
    assert (info.image_reader_writer, info.preprocessor) == ("SimpleITKIO", "DefaultPreprocessor")
    assert "resampling_fn_data" in info.extra
    assert "channels (normalisation): 0: CT (CTNormalization), 1: T2 (ZScoreNormalization)" in info.describe()


def test_one_image_as_nnunets_preprocessor_makes_it(tmp_path, case):
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans, dj = ct_mr_plans()
    ours, props = preprocess_image(case, plans, "3d_fullres", dj, return_properties=True)
    pm = PlansManager(plans)
    theirs, _, _ = DefaultPreprocessor(verbose=False).run_case([str(f) for f in case], None, pm,
                                                               pm.get_configuration("3d_fullres"), dj)
    assert ours.dtype == np.float32 and np.array_equal(ours, theirs)
    # what that means, checked without nnU-Net: axes transposed (z, x, y), resampled from 3 x 1 x 0.8 mm to
    # 2 x 1 x 1 mm, the CT channel clipped to its percentiles and standardised with the dataset's statistics
    assert ours.shape == (2, 15, 24, 24)
    assert np.allclose(props["spacing"], [3.0, 0.8, 1.0])  # as read (z, y, x)
    lo, hi = (CT["percentile_00_5"] - CT["mean"]) / CT["std"], (CT["percentile_99_5"] - CT["mean"]) / CT["std"]
    assert lo - 0.5 < ours[0].min() < lo + 0.1 and hi - 0.1 < ours[0].max() < hi + 0.5  # cubic resampling overshoots
    assert abs(float(ours[1].mean())) < 0.05 and abs(float(ours[1].std()) - 1) < 0.2
    # the same from a plans file and from an array in memory
    (tmp_path / "plans.json").write_text(json.dumps(plans))
    (tmp_path / "dataset.json").write_text(json.dumps(dj))
    assert np.array_equal(preprocess_image(case, tmp_path / "plans.json", "3d_fullres", tmp_path / "dataset.json"),
                          ours)
    import SimpleITK as sitk

    data = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in case])
    assert np.array_equal(preprocess_array(data, (3.0, 0.8, 1.0), plans, "3d_fullres", dj), ours)


def test_the_bundle_knows_its_preprocessing(tmp_path, case):
    plans, dj = ct_mr_plans()
    path, _ = save_checkpoint(tmp_path / "ck.pth", plans, "3d_fullres")
    ck = torch.load(path, weights_only=False)
    ck["init_args"]["dataset_json"] = dj
    torch.save(ck, path)
    bundle = load_encoder(path)
    assert bundle.encoder.in_channels == 2 and bundle.preprocessing == preprocessing_info(plans, "3d_fullres", dj)
    x = bundle.preprocess(case)
    assert np.array_equal(x, preprocess_image(case, plans, "3d_fullres", dj))
    with torch.no_grad():
        assert bundle.encoder(torch.from_numpy(x[None, :, :12, :24, :24])).shape == (1, 16, 3, 6, 6)


def test_inputs_that_do_not_fit_are_named(tmp_path, case):
    plans, dj = ct_mr_plans()
    with pytest.raises(PlansError, match=r"1 image file\(s\) given, the model takes 2 channel\(s\) \(0: CT, 1: T2\)"):
        preprocess_image(case[0], plans, "3d_fullres", dj)
    with pytest.raises(PlansError, match=r"nope_0001\.nii\.gz: image file not found"):
        preprocess_image([case[0], tmp_path / "nope_0001.nii.gz"], plans, "3d_fullres", dj)
    with pytest.raises(PlansError, match=r"configuration '2d' not in plans 'nnUNetPlans' \(available: \['3d_fullres'\]"):
        preprocess_image(case, plans, "2d", dj)
    with pytest.raises(PlansError, match="dataset_json is needed"):
        preprocess_image(case, plans, "3d_fullres")
    with pytest.raises(PlansError, match=r"missing\.json: plans file not found"):
        preprocessing_info(tmp_path / "missing.json", "3d_fullres", dj)
    with pytest.raises(ValueError, match=r"data has 1 channel\(s\), the model takes 2"):
        preprocess_array(np.ones((1, 4, 4, 4)), (1, 1, 1), plans, "3d_fullres", dj)
    with pytest.raises(ValueError, match=r"data must be \(channels, z, y, x\)"):
        preprocess_array(np.ones((4, 4, 4)), (1, 1, 1), plans, "3d_fullres", dj)
