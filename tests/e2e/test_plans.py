"""Plans transfer from a checkpoint alone (no source data) or a source plans file; preprocess, check, fine-tune."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import RECIPES, Workspace, bin_path, run

from nnunet_transfer.demo.synthetic import make_dataset

TRAINER = "nnUNetTrainerAdaptiveFT"
ANISO, TWO_CH, REGIONS, DRY = 911, 912, 913, 914


@pytest.fixture(scope="module")
def plans_ws(workspace, tmp_path_factory) -> Workspace:
    """A second nnU-Net root holding only target datasets and a copy of the pretrained checkpoint: the source
    dataset's raw and preprocessed folders are not there."""
    ws = Workspace(tmp_path_factory.mktemp("plans"))
    raw = ws.root / "raw"
    make_dataset(raw, ANISO, "AnisoT", shape=(12, 32, 32), spacing=(3, 1, 1), seed=11,
                 labels={"background": 0, "lesion": 1, "vessel": 2})
    make_dataset(raw, TWO_CH, "TwoChT", shape=(32, 32, 32), spacing=(1, 1, 1), seed=12,
                 channel_names={"0": "T1", "1": "T2"})
    make_dataset(raw, REGIONS, "RegionsT", shape=(32, 32, 32), spacing=(1, 1, 1), seed=13,
                 labels={"background": 0, "whole": [1, 2], "lesion": 2}, regions_class_order=[1, 2])
    make_dataset(raw, DRY, "DryT", num_cases=3, shape=(16, 48, 48), spacing=(4, 1, 1), seed=14)
    (ws.root / "preprocessed").mkdir()
    (ws.root / "pretrained").mkdir()
    ws.checkpoint = ws.root / "pretrained" / "checkpoint_final.pth"
    shutil.copy(workspace.checkpoint, ws.checkpoint)
    ws.source_plans = workspace.root / "preprocessed" / "Dataset900_Src" / "nnUNetPlans.json"
    assert not (ws.root / "raw" / "Dataset900_Src").exists()
    return ws


def _plans(ws, *args, check=True):
    return run([bin_path("nnunet-transfer"), "plans", *map(str, args)], ws.env, check=check)


def _finetune(ws, dataset, identifier, *extra):
    env = {**ws.env, "NNUNET_TRANSFER_RECIPE": str(RECIPES / "tiny.yaml")}
    run([bin_path("nnUNetv2_train"), str(dataset), "3d_fullres", "0", "-p", identifier, "-tr", TRAINER,
         "-pretrained_weights", str(ws.checkpoint), "-device", "cpu", *extra], env)


def _report(ws, name, identifier):
    fold = ws.results(name, TRAINER, identifier) / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    return json.loads((fold / "pretrained_load_report.json").read_text())


def test_anisotropic_target_loads_every_tensor_but_the_heads_exactly(plans_ws, tmp_path):
    proc = _plans(plans_ws, "--from", plans_ws.checkpoint, "-t", ANISO, "-tp", "FT", "--json", tmp_path / "p.json")
    assert "coverage 1.000 (ok)" in proc.stdout
    assert "x3.00 voxels per case" in proc.stdout
    plans = json.loads((plans_ws.root / "preprocessed" / "Dataset911_AnisoT" / "FT.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    assert plans["dataset_name"] == "Dataset911_AnisoT" and plans["plans_name"] == "FT"
    assert conf["data_identifier"] == "FT_3d_fullres" and conf["spacing"] == [1.0, 1.0, 1.0]
    assert conf["architecture"]["arch_kwargs"]["kernel_sizes"][0] == [3, 3, 3]  # the source architecture
    assert list(plans["configurations"]) == ["3d_fullres"]
    assert len(list((plans_ws.root / "preprocessed" / "Dataset911_AnisoT" / "FT_3d_fullres").glob("*.b2nd"))) >= 5
    _finetune(plans_ws, ANISO, "FT")
    report = _report(plans_ws, "Dataset911_AnisoT", "FT")
    assert all(t["status"] == "loaded" and t["reason"] == "exact" for t in report["tensors"] if not t["is_head"])
    assert report["coverage"] == 1.0


def test_two_channel_target_adapts_only_the_first_convolution(plans_ws):
    proc = _plans(plans_ws, "--from", plans_ws.checkpoint, "-t", TWO_CH, "-tp", "FT")
    assert "input channels 1 -> 2" in proc.stdout
    plans = json.loads((plans_ws.root / "preprocessed" / "Dataset912_TwoChT" / "FT.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    assert conf["normalization_schemes"] == ["ZScoreNormalization", "ZScoreNormalization"]
    assert len(plans["foreground_intensity_properties_per_channel"]) == 2
    _finetune(plans_ws, TWO_CH, "FT")
    report = _report(plans_ws, "Dataset912_TwoChT", "FT")
    assert [t["key"] for t in report["tensors"] if t["status"] != "loaded"] == ["encoder.stages.0.0.convs.0.conv.weight"]


def test_region_based_target(plans_ws):
    """A label-based source, a region-based target: the region of the same name and label set ("lesion", the label
    2 in both) takes the source's channel; "whole" ({1, 2}) has no source channel of that name and stays fresh."""
    _plans(plans_ws, "--from", plans_ws.checkpoint, "-t", REGIONS, "-tp", "FT")
    _finetune(plans_ws, REGIONS, "FT")
    report = _report(plans_ws, "Dataset913_RegionsT", "FT")
    assert [(m["target_index"], m["target_name"], m["source_index"], m["source_name"])
            for m in report["label_mapping"]] == [(0, "whole", None, None), (1, "lesion", 2, "lesion")]
    heads = [t for t in report["tensors"] if t["is_head"]]
    assert heads and {t["code"] for t in heads} == {"head_mapped"}
    assert "fresh: whole" in heads[0]["reason"], heads[0]["reason"]
    assert all(t["status"] == "loaded" for t in report["tensors"] if not t["is_head"])


def test_2d_configuration_from_a_source_plans_file(plans_ws):
    proc = _plans(plans_ws, "--from", plans_ws.source_plans, "-t", TWO_CH, "-tp", "FT2d", "-c", "2d")
    assert "[2d]" in proc.stdout and "coverage 1.000 (ok)" in proc.stdout
    plans = json.loads((plans_ws.root / "preprocessed" / "Dataset912_TwoChT" / "FT2d.json").read_text())
    assert list(plans["configurations"]) == ["2d"]
    run([bin_path("nnUNetv2_train"), str(TWO_CH), "2d", "0", "-p", "FT2d", "-tr", plans_ws.TINY, "-device", "cpu"],
        plans_ws.env)
    assert (plans_ws.results("Dataset912_TwoChT", plans_ws.TINY, "FT2d", "2d") / "fold_0" / "checkpoint_final.pth").is_file()


def test_dry_run_shows_the_diff_and_the_cost_and_writes_nothing(plans_ws):
    proc = _plans(plans_ws, "--from", plans_ws.checkpoint, "-t", DRY, "-tp", "FT", "--dry-run")
    assert "dry run: nothing written" in proc.stdout
    assert "median case 64x48x48 voxels at the transferred spacing [1.0, 1.0, 1.0] mm vs 16x48x48" in proc.stdout
    assert "x4.00 voxels per case" in proc.stdout
    assert "configurations.3d_fullres.data_identifier" in proc.stdout
    assert "coverage 1.000 (ok)" in proc.stdout
    assert not (plans_ws.root / "preprocessed" / "Dataset914_DryT").exists()


def _listing(ws):
    return sorted(str(p.relative_to(ws.root)) for p in (ws.root / "preprocessed").rglob("*"))


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["-t", DRY, "-tp", "X", "-c", "3d_lowres"], "configuration(s) ['3d_lowres'] not in the source plans"),
        (["-t", 977, "-tp", "X"], "target dataset '977': no raw data"),
        (["-t", DRY, "-tp", "X", "--patch-size", "30", "32", "32"], "must be a positive multiple"),
        (["-t", DRY, "-tp", "X", "--patch-size", "32", "32"], "has 2 values"),
        (["-t", DRY, "-tp", "X", "--spacing", "1", "-1", "1"], "needs 3 positive values"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(plans_ws, args, fragment):
    before = _listing(plans_ws)
    proc = _plans(plans_ws, "--from", plans_ws.checkpoint, *args, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert fragment in proc.stderr
    assert _listing(plans_ws) == before


def test_checkpoint_without_plans(plans_ws, tmp_path, unet_factory):
    torch.save({"state_dict": unet_factory().state_dict()}, tmp_path / "foreign.pth")
    proc = _plans(plans_ws, "--from", tmp_path / "foreign.pth", "-t", DRY, "-tp", "X", check=False)
    assert proc.returncode == 2 and "carries no nnU-Net plans" in proc.stderr and "Traceback" not in proc.stderr


def test_existing_plans_are_never_overwritten_without_the_flag(plans_ws, tmp_path):
    target = plans_ws.root / "preprocessed" / "Dataset914_DryT"
    target.mkdir(exist_ok=True)
    (target / "Mine.json").write_text('{"mine": true}')
    proc = _plans(plans_ws, "--from", plans_ws.checkpoint, "-t", DRY, "-tp", "Mine", check=False)
    assert proc.returncode == 2 and "exist already" in proc.stderr and "--overwrite" in proc.stderr
    assert (target / "Mine.json").read_text() == '{"mine": true}'
    shutil.rmtree(target)


def test_a_campaign_in_one_process_keeps_each_transfer_in_its_own_root(plans_ws, tmp_path, monkeypatch):
    """Through the Python API, with nnU-Net's real fingerprint extraction and preprocessing: a dry run, then two
    transfers into two preprocessed roots; the environment (pointing at a decoy) is never changed or used."""
    import os

    from nnunet_transfer.nnunet.plans import (
        check_transfer,
        preprocess_transfer,
        read_source_plans,
        transfer_plans,
        write_plans,
    )

    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "decoy_raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "decoy"))
    (tmp_path / "decoy").mkdir()
    before = dict(os.environ)
    raw, name = plans_ws.root / "raw", "Dataset914_DryT"
    source = read_source_plans(plans_ws.source_plans)
    kwargs = {"configurations": ["3d_fullres"], "num_processes": 1}
    dry = transfer_plans(source, DRY, "Campaign", raw=raw, preprocessed=tmp_path / "A", dry_run=True, **kwargs)
    assert not (tmp_path / "A").exists() and dry.target_folder == tmp_path / "A" / name
    for root in ("A", "B"):
        transfer = transfer_plans(source, DRY, "Campaign", raw=raw, preprocessed=tmp_path / root, **kwargs)
        assert transfer.plans == dry.plans
        write_plans(transfer)
        preprocess_transfer(transfer, 1)
        assert [r.passed for _, r in check_transfer(transfer)] == [True]
    for root in ("A", "B"):
        folder = tmp_path / root / name
        assert (folder / "dataset_fingerprint.json").is_file() and (folder / "Campaign.json").is_file()
        assert len(list((folder / "Campaign_3d_fullres").glob("*.b2nd"))) == 6  # 3 cases: data and seg
        assert len(list((folder / "gt_segmentations").iterdir())) == 3
    assert list((tmp_path / "decoy").iterdir()) == [] and not (plans_ws.root / "preprocessed" / name).exists()
    after = dict(os.environ)
    assert {k: after.get(k) for k in before} == before
