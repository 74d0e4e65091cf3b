"""nnssl checkpoints through the stock CLI: ``nnunet-transfer plans --from CKPT`` -> preprocessing ->
``nnUNetv2_train ... -pretrained_weights CKPT`` -> ``nnUNetv2_predict`` (a 2-channel ResEnc target; a Primus whose
positional embedding is resampled to another patch grid, its tokens flattened as nnssl's EvaMAE pretraining flattened
them (PrimusHWD), trained by the nnssl Primus trainer variant and predicted by the stock command)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import RECIPES, bin_path, cli, nnunet_env, run
from nnssl_data import CITATION, primus_checkpoint, resenc_checkpoint

RESENC_TARGET, PRIMUS_TARGET = 951, 950


@pytest.fixture(scope="module")
def nnssl_ws(tmp_path_factory):
    """Two raw targets (2 channels at 1.5x1x1 mm; 1 channel) and two tiny nnssl checkpoints (ResEnc, released
    form with citations; Primus, training form, plan only as adaptation_plan.json, the singular key spelling, a
    pretraining patch that differs from what its positional embedding holds)."""
    from nnunet_transfer.demo.synthetic import make_dataset

    root = tmp_path_factory.mktemp("nnssl")
    make_dataset(root / "raw", RESENC_TARGET, "Two", shape=(16, 20, 20), spacing=(1.5, 1, 1), seed=1,
                 channel_names={"0": "T1", "1": "T2"})
    make_dataset(root / "raw", PRIMUS_TARGET, "One", shape=(20, 20, 20), seed=0)
    resenc, _ = resenc_checkpoint(root / "ssl" / "resenc" / "checkpoint_final.pth", recommended=(16, 16, 16),
                                  citations=[CITATION])
    primus, _ = primus_checkpoint(root / "ssl" / "primus" / "fold_0" / "checkpoint_final.pth", form="training",
                                  input_shape=(16, 16, 16), patch=(32, 32, 32), recommended=(16, 16, 16),
                                  embed=False, beside=True, singular=True, decoder_depth=1)
    # one export worker: nnU-Net spawns its validation pools per training, the cost on 2 cores is the imports
    return {"root": root, "env": nnunet_env(root, nnUNet_def_n_proc="1"), "resenc": resenc, "primus": primus}


def _fold(root: Path, dataset: str, trainer: str, plans: str) -> Path:
    return root / "results" / dataset / f"{trainer}__{plans}__3d_fullres" / "fold_0"


def test_resenc_two_channels_plans_and_stock_train(nnssl_ws):
    root, env = nnssl_ws["root"], {**nnssl_ws["env"], "NNUNET_TRANSFER_RECIPE": str(RECIPES / "tiny.yaml")}
    proc = cli("plans", "--from", nnssl_ws["resenc"], "-t", RESENC_TARGET, "-tp", "nnsslRes", "--batch-size", "3",
               env=env, check=True)
    assert "coverage 1.000 (ok)" in proc.stdout and "-tr nnUNetTrainerAdaptiveFT_nnsslResEnc" in proc.stdout
    plans = json.loads((root / "preprocessed" / "Dataset951_Two" / "nnsslRes.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    assert conf["architecture"]["network_class_name"].endswith("unet.ResidualEncoderUNet")
    assert conf["patch_size"] == [16, 16, 16] and conf["batch_size"] == 3
    assert conf["spacing"] == [1.0, 1.0, 1.0]  # the pretraining spacing, not the target's 1.5 mm
    assert conf["normalization_schemes"] == ["ZScoreNormalization"] * 2

    run([bin_path("nnUNetv2_train"), str(RESENC_TARGET), "3d_fullres", "0", "-p", "nnsslRes", "-tr",
         "nnUNetTrainerAdaptiveFT", "-pretrained_weights", str(nnssl_ws["resenc"]), "-device", "cpu"], env)
    fold = _fold(root, "Dataset951_Two", "nnUNetTrainerAdaptiveFT", "nnsslRes")
    report = json.loads((fold / "pretrained_load_report.json").read_text())
    by_key = {t["key"]: t for t in report["tensors"]}
    assert report["coverage"] == 1.0 and report["passed"]
    stem = by_key["encoder.stem.convs.0.conv.weight"]
    assert stem["code"] == "input_channels" and stem["source_shape"][1] == 1 and stem["target_shape"][1] == 2
    assert {by_key[k]["code"] for k in by_key if k.startswith("decoder.stages.")} == {"pretraining_decoder"}
    assert not any(t["in_coverage"] for t in report["tensors"] if t["key"].startswith("decoder."))
    assert (fold / "checkpoint_final.pth").is_file()


def test_primus_other_patch_grid_trained_by_the_variant_and_predicted(nnssl_ws, tmp_path):
    root, env = nnssl_ws["root"], {**nnssl_ws["env"], "NNUNET_TRANSFER_RECIPE": str(RECIPES / "nnssl_tiny.yaml")}
    proc = cli("plans", "--from", nnssl_ws["primus"], "-t", PRIMUS_TARGET, "-tp", "nnsslPrimus",
               "--patch-size", "24", "24", "24", "--spacing", "target", env=env, check=True)
    assert "-tr nnUNetTrainerAdaptiveFT_nnsslPrimus" in proc.stdout
    conf = json.loads((root / "preprocessed" / "Dataset950_One" / "nnsslPrimus.json").read_text())[
        "configurations"]["3d_fullres"]
    assert conf["architecture"]["arch_kwargs"]["input_shape"] == [24, 24, 24] and conf["patch_size"] == [24] * 3
    # an EvaMAE checkpoint (BaseEvaMAETrainer): the network flattens its tokens as the pretraining did
    assert conf["architecture"]["network_class_name"] == "nnunet_transfer.core.primus.PrimusHWD"

    trainer = "nnUNetTrainerAdaptiveFT_nnsslPrimus"
    run([bin_path("nnUNetv2_train"), str(PRIMUS_TARGET), "3d_fullres", "0", "-p", "nnsslPrimus", "-tr", trainer,
         "-pretrained_weights", str(nnssl_ws["primus"]), "-device", "cpu"], env)
    fold = _fold(root, "Dataset950_One", trainer, "nnsslPrimus")
    report = json.loads((fold / "pretrained_load_report.json").read_text())
    pos = next(t for t in report["tensors"] if t["key"] == "eva.pos_embed")
    assert pos["code"] == "pos_embed" and "from a 4x4x4 to a 6x6x6 token grid" in pos["reason"]
    assert pos["source_shape"] == [1, 64, 48] and pos["target_shape"] == [1, 216, 48]
    assert report["coverage"] == 1.0 and not any(n.startswith("token order") for n in report["notes"])
    assert "; 33 tensors of the pretraining decoder and head not loaded" in report["notes"][0]
    rows = json.loads((fold / "lr_table.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert rows[0]["lr"]["heads"] == pytest.approx(0.5e-3) and rows[1]["lr"]["heads"] == pytest.approx(1e-3)
    state = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert {tuple(g["betas"]) for g in state["optimizer_state"]["param_groups"]} == {(0.9, 0.98)}

    images = tmp_path / "in"
    images.mkdir()
    src = root / "raw" / "Dataset950_One" / "imagesTr"
    (images / "case_0000.nii.gz").write_bytes(next(src.glob("*_0000.nii.gz")).read_bytes())
    run([bin_path("nnUNetv2_predict"), "-i", str(images), "-o", str(tmp_path / "out"), "-d", str(PRIMUS_TARGET),
         "-c", "3d_fullres", "-p", "nnsslPrimus", "-tr", trainer, "-f", "0", "-device", "cpu", "-npp", "1",
         "-nps", "1", "--disable_progress_bar"], env)
    import SimpleITK as sitk

    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "case.nii.gz")))
    assert seg.shape == (20, 20, 20) and set(seg.ravel().tolist()) <= {0, 1, 2}
