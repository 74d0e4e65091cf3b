"""The nnunet-transfer command line (as a subprocess, as users run it) and trainer registration."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import assert_clean_error, cli

BAD_INPUTS = {
    "missing": (lambda p: p / "missing.pth", "no such file"),
    "directory": (lambda p: p, "is a directory"),
    "empty": (lambda p: ((p / "empty.pth").write_bytes(b"") and p / "empty.pth") or p / "empty.pth", "file is empty"),
    "random": (lambda p: (p / "r.pth").write_bytes(os.urandom(2000)) and p / "r.pth", "not a PyTorch or safetensors"),
    "truncated": (lambda p: (torch.save({"a": torch.zeros(5000)}, p / "t0.pth"),
                             (p / "t.pth").write_bytes((p / "t0.pth").read_bytes()[:3000]))[1] and p / "t.pth",
                  "truncated or corrupt"),
    "empty state dict": (lambda p: torch.save({"state_dict": {}}, p / "e.pth") or p / "e.pth", "e.pth"),
    "unknown container": (lambda p: torch.save({"epoch": 1, "stuff": {"a": 1}}, p / "u.pth") or p / "u.pth",
                          "--container"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("command", ["inspect", "check"])
def test_bad_input_exit_2_clear_message_nothing_created(case, command, tmp_path, workspace):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    make, fragment = BAD_INPUTS[case]
    path = make(inputs)
    out = tmp_path / "out" / "report.json"
    extra = ["-d", "901", "-c", "3d_fullres"] if command == "check" else []
    before = sorted(p.name for p in tmp_path.rglob("*"))
    proc = cli(command, path, *extra, "--json", out, env=workspace.env)
    assert_clean_error(proc, 2, fragment, str(path.name) if case != "directory" else str(path))
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing created


def test_inspect_nnunet_checkpoint(workspace, tmp_path):
    proc = cli("inspect", workspace.checkpoint, "--json", tmp_path / "i.json", check=True)
    assert "network_weights" in proc.stdout and "nnUNetTrainer_TransferTestTiny" in proc.stdout
    assert "['background', 'organ', 'lesion']" in proc.stdout
    info = json.loads((tmp_path / "i.json").read_text())
    assert info["format"] == "torch-zip" and info["tensors"] < info["keys"]
    assert info["plans"]["dataset_name"] == "Dataset900_Src" and info["plans"]["patch_size"] == [32, 32, 32]
    assert info["labels"] == {"names": ["background", "organ", "lesion"], "regions": False}


def test_check_passes_on_anisotropic_target(workspace, tmp_path):
    proc = cli("check", workspace.checkpoint, "-d", "901", "-c", "3d_fullres", "--json", tmp_path / "r.json",
                "-v", env=workspace.env)
    assert proc.returncode == 0, proc.stderr
    assert "transposed kernel 2x2x2->1x2x2" in proc.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["coverage"] == 1.0 and data["applied"] is False
    assert {"key", "status", "reason", "source_key", "source_shape", "target_shape"} <= set(data["tensors"][0])
    assert data["unused_source_keys"] == []


def test_check_builds_the_network_of_the_named_trainer(workspace, tmp_path):
    """-tr: the dry run uses the network that trainer builds (nnUNetTrainerBN: BatchNorm, whose running statistics
    the InstanceNorm source lacks); an unknown trainer is a clear error."""
    keys = {}
    for trainer in (None, "nnUNetTrainerBN"):
        out = tmp_path / f"{trainer}.json"
        proc = cli("check", workspace.checkpoint, "-d", "901", "-c", "3d_fullres", "--json", out,
                    *(["-tr", trainer] if trainer else []), env=workspace.env)
        assert proc.returncode == 0, proc.stderr
        keys[trainer] = {t["key"] for t in json.loads(out.read_text())["tensors"] if t["status"] == "missing"}
    assert not any(k.endswith("running_mean") for k in keys[None])
    assert any(k.endswith("running_mean") for k in keys["nnUNetTrainerBN"])
    proc = cli("check", workspace.checkpoint, "-d", "901", "-c", "3d_fullres", "-tr", "nnUNetTrainerNoSuch",
                env=workspace.env)
    assert_clean_error(proc, 2, "nnUNetTrainerNoSuch")


def test_check_fails_the_guard_with_exit_1_and_writes_the_report(workspace, tmp_path):
    # the 2d configuration of the target builds a 2d network: nothing of a 3d checkpoint fits
    proc = cli("check", workspace.checkpoint, "-d", "901", "-c", "2d", "--json", tmp_path / "r.json",
                env=workspace.env)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "FAIL: coverage 0.0" in proc.stderr
    assert "dimensionality differs" in proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is False


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["-d", "901", "-c", "3d_lowres"], "configuration '3d_lowres' not in plans"),
     (["-d", "901", "-c", "3d_fullres", "-p", "NoSuchPlans"], "NoSuchPlans.json: plans not found"),
     (["-d", "977", "-c", "3d_fullres"], "dataset '977' not found"),
     (["-d", "901", "-c", "3d_fullres", "--rename", "nope"], "must look like PATTERN=REPLACEMENT")],
)
def test_check_bad_target_exit_2(workspace, tmp_path, args, fragment):
    proc = cli("check", workspace.checkpoint, *args, "--json", tmp_path / "r.json", env=workspace.env)
    assert_clean_error(proc, 2, fragment)
    assert not (tmp_path / "r.json").exists()


def test_doctor_reports_working_registration(workspace):
    proc = cli("doctor", env=workspace.env)
    assert proc.returncode == 0, proc.stdout
    assert "[ok] trainer lookup" in proc.stdout and "registration works" in proc.stdout


def test_doctor_says_why_registration_is_off(workspace):
    env = {**workspace.env, "NNUNET_TRANSFER_NO_AUTOREGISTER": "1"}
    proc = cli("doctor", env=env)
    assert proc.returncode == 1
    assert "[FAIL] nnUNet_extTrainer in this process" in proc.stdout
    assert "NNUNET_TRANSFER_NO_AUTOREGISTER is set" in proc.stdout
