"""``nnunet-transfer export`` on a model folder trained by the stock ``nnUNetv2_train`` (the session workspace's
``nnUNetTrainer_TransferTestTiny`` on dataset 900, fold 0), both formats, checked against the network nnU-Net's own
predictor builds and loads (``nnUNetPredictor.initialize_from_trained_model_folder``)."""

from __future__ import annotations

import hashlib
import json
import warnings

import pytest
import torch
from helpers import cli


@pytest.fixture(scope="module")
def predictor_network(workspace):
    """The network of fold 0 as nnU-Net's predictor holds it (deep supervision off, fold 0's weights)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    mp = pytest.MonkeyPatch()
    for key in ("nnUNet_extTrainer", "nnUNet_results", "nnUNet_preprocessed", "nnUNet_raw", "nnUNet_compile"):
        mp.setenv(key, workspace.env[key])
    try:
        predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predictor.initialize_from_trained_model_folder(str(workspace.results("Dataset900_Src", workspace.TINY)),
                                                           use_folds=(0,))
    finally:
        mp.undo()
    return predictor.network.eval()


def _run(path, fmt: str, x: torch.Tensor) -> torch.Tensor:
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path))
        with torch.no_grad():
            return module(x)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_of_a_stock_trained_fold(workspace, predictor_network, tmp_path, fmt):
    folder = workspace.results("Dataset900_Src", workspace.TINY)
    out = tmp_path / f"src_fold0.{'pt' if fmt == 'torchscript' else 'onnx'}"
    proc = cli("export", folder, "-f", "0", "--format", fmt, "-o", out, env=workspace.env, check=True)
    assert f"wrote {out}" in proc.stdout and "rtol 0.0001" in proc.stdout
    assert proc.stderr == ""

    meta = json.loads(out.with_name(out.name + ".json").read_text())
    plans = json.loads((folder / "plans.json").read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    ckpt_path = folder / "fold_0" / "checkpoint_final.pth"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert meta["source"] == {
        "model_folder": str(folder.resolve()), "dataset": "Dataset900_Src", "trainer": workspace.TINY,
        "plans": "nnUNetPlans", "configuration": "3d_fullres", "fold": "0", "checkpoint": str(ckpt_path.resolve()),
        "checkpoint_sha256": hashlib.sha256(ckpt_path.read_bytes()).hexdigest(), "epoch": ckpt["current_epoch"]}
    assert meta["channel_names"] == dataset_json["channel_names"]
    assert meta["labels"] == dataset_json["labels"]
    assert meta["output_channels"]["names"] == sorted(dataset_json["labels"], key=dataset_json["labels"].get)
    assert meta["spacing"] == conf["spacing"] and meta["patch_size"] == conf["patch_size"]
    assert [n["scheme"] for n in meta["normalization"]] == conf["normalization_schemes"]
    assert meta["normalization"][0]["intensity_properties"] == \
        plans["foreground_intensity_properties_per_channel"]["0"]
    assert meta["transpose_forward"] == plans["transpose_forward"]
    assert meta["transpose_backward"] == plans["transpose_backward"]
    assert meta["inference_allowed_mirroring_axes"] == list(ckpt["inference_allowed_mirroring_axes"])
    assert meta["versions"]["nnunetv2"].startswith("2.8") and meta["versions"]["torch"] == torch.__version__
    ver = meta["verification"]
    assert ver["tolerance"]["rtol"] == 1e-4 and ver["max_relative_diff"] <= 1e-4 and ver["weights"]["passed"]
    assert meta["export"]["dynamic_batch"] and meta["export"]["dynamic_spatial"]

    # the export computes what nnU-Net's predictor network computes, at the patch and at another allowed size
    multiple = meta["export"]["spatial_multiple_of"]
    channels = len(dataset_json["channel_names"])
    for shape in ([2, channels, *conf["patch_size"]], [1, channels, *(p + m for p, m in zip(conf["patch_size"],
                                                                                            multiple, strict=True))]):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            expected = predictor_network(x)
        got = _run(out, fmt, x)
        assert got.shape == expected.shape
        assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max())
