"""``nnunet-transfer gpu-check`` (also ``benchmarks/bench_gpu.py``): the CPU smoke run of the GPU check, so it never rots.

The check makes its own datasets and drives the stock ``nnUNetv2_plan_and_preprocess`` / ``nnUNetv2_train`` /
``nnUNetv2_predict`` and ``nnunet-transfer export`` (several minutes on 2 cores with ``--tiny``).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
from helpers import assert_clean_error, cli, nnunet_env, run

from nnunet_transfer.gpucheck import CONFIGS, RATIOS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, str]:
    """One tiny run on the CPU, through the benchmark script (which is the CLI command)."""
    tmp = tmp_path_factory.mktemp("gpucheck")
    env = nnunet_env(tmp)
    out = tmp / "result.json"
    proc = run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device", "cpu", "--tiny",
                "--budget-s", "1500", "--workdir", str(tmp / "work"), "--json", str(out)], env, timeout=1800)
    return json.loads(out.read_text()), proc.stdout


def _number(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_smoke_run_has_every_figure_and_ratio(smoke):
    result, stdout = smoke
    device = result["device"]
    for key in ("name", "device", "torch", "cuda", "cudnn", "python", "onnxruntime"):
        assert key in device, key
    assert device["device"] == "cpu"
    figures = result["figures"]
    assert set(figures["runs"]) == {c.name for c in CONFIGS}
    for config in CONFIGS:
        run_ = figures["runs"][config.name]
        if config.compiled:  # nnU-Net never compiles on a CPU: present, empty, and the reason is said
            assert run_["epoch_s"] is None and run_["epochs"] == []
        else:
            assert _number(run_["epoch_s"]), (config.name, run_)
            assert [e["epoch"] for e in run_["epochs"]] == list(range(result["settings"]["epochs"]))
            assert all(e["peak_memory_mb"] is None for e in run_["epochs"])  # no CUDA memory on a CPU
    assert any("never compiles on a CPU" in c for c in result["cut"])
    assert set(figures["ratios"]) == set(RATIOS)
    for name, ratio in figures["ratios"].items():
        assert set(ratio) == {"time", "memory"}
        if "compiled" in name:
            assert ratio["time"] is None
        else:
            a, b = RATIOS[name]
            assert ratio["time"] == pytest.approx(figures["runs"][a]["epoch_s"] / figures["runs"][b]["epoch_s"])
    load = figures["load"]
    assert load["passed"] is True and 0.5 <= load["coverage"] <= 1.0
    assert figures["predict"]["ok"] is True and figures["predict"]["cases"] == 2
    export = figures["export"]
    assert export["verified"] is True and export["cuda_provider"] is None and "CPU only" in export["why"]
    assert result["settings"]["patch_size"] and result["settings"]["rounds"] == 1
    # the table: one line per run and per ratio, the device named
    assert "GPU check on" in stdout and "(cpu;" in stdout
    for config in CONFIGS:
        assert config.title in stdout
    for name in RATIOS:
        assert name in stdout


def test_without_cuda_the_check_says_so_in_one_line(tmp_path):
    """The default device is CUDA: on a machine without one, one line, exit 2, nothing created."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    work = tmp_path / "work"
    proc = cli("gpu-check", "--workdir", work, env=dict(os.environ))
    assert_clean_error(proc, 2, "no CUDA device", "--device cpu --tiny")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not work.exists()
