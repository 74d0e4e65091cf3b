"""``nnunet-transfer export``: TorchScript and ONNX exports of model folders built here (PlainConvUNet 2d and 3d,
ResidualEncoderUNet, BatchNorm), checked against eager networks loaded independently with plain torch; the refusals
(random, other-fold, tampered weights) and the bad-input errors (exit 2, nothing written)."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_clean_error, cli, make_dataset_json, make_plans

from nnunet_transfer.cli import main
from nnunet_transfer.export import (
    ExportError,
    ExportRefusedError,
    build_fold_network,
    compare_weights,
    export_model,
    export_network,
    metadata_path,
    read_fold_checkpoint,
    read_model_folder,
)
from nnunet_transfer.export.verify import input_shapes, second_spatial_size
from nnunet_transfer.nnunet.networks import build_network

# the tests load TorchScript files themselves; PyTorch deprecates torch.jit (it works)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

KINDS = {
    # kind: (configuration, trainer, residual encoder)
    "plain3d": ("3d_fullres", "nnUNetTrainer", False),
    "plain2d": ("2d", "nnUNetTrainer", False),
    "resenc3d": ("3d_fullres", "nnUNetTrainer", True),
    "bn3d": ("3d_fullres", "nnUNetTrainerBN", False),
    "nostride3d": ("3d_fullres", "nnUNetTrainer_ExportTestOwnStrides", False),  # see FIXED_STRIDES_TRAINER
}

# A user's trainer (found through nnUNet_extTrainer) that sets the strides itself: the plans do not list them, so the
# export cannot know the total stride and keeps the spatial size fixed to the patch.
FIXED_STRIDES_TRAINER = """
import copy
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans


class nnUNetTrainer_ExportTestOwnStrides(nnUNetTrainer):
    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision=True):
        kwargs = copy.deepcopy(configuration_manager.network_arch_init_kwargs)
        kwargs["strides"] = [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
        return get_network_from_plans(configuration_manager.network_arch_class_name, kwargs,
                                      configuration_manager.network_arch_init_kwargs_req_import, num_input_channels,
                                      num_output_channels, allow_init=True, deep_supervision=enable_deep_supervision)
"""


def plans_for(kind: str) -> dict:
    """make_plans (3 stages, 4-8-16 features) with 16^3 patches, plus a 2d configuration (32^2) and ResEnc."""
    plans = make_plans(features=(4, 8, 16))
    plans.pop("continue_training")
    conf = plans["configurations"]["3d_fullres"]
    conf["patch_size"] = [16, 16, 16]
    if KINDS[kind][2]:
        arch = conf["architecture"]
        arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
        arch["arch_kwargs"]["n_blocks_per_stage"] = arch["arch_kwargs"].pop("n_conv_per_stage")
    if kind == "nostride3d":
        del conf["architecture"]["arch_kwargs"]["strides"]
    c2 = copy.deepcopy(conf)
    kw = c2["architecture"]["arch_kwargs"]
    kw.update(conv_op="torch.nn.modules.conv.Conv2d", norm_op="torch.nn.modules.instancenorm.InstanceNorm2d",
              kernel_sizes=[[3, 3]] * 3, strides=[[1, 1], [2, 2], [2, 2]])
    c2.update(data_identifier="nnUNetPlans_2d", patch_size=[32, 32], spacing=[1.0, 1.0],
              median_image_size_in_voxels=[32.0, 32.0])
    plans["configurations"]["2d"] = c2
    return plans


def trained_network(plans: dict, configuration: str, dataset_json: dict, trainer: str, fold: int | str):
    """The network the trainer builds, with weights no initialisation gives (as after training; distinct per fold)."""
    torch.manual_seed(100 + (fold if isinstance(fold, int) else 99))
    net = build_network(plans, configuration, dataset_json, trainer=trainer)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_var"):
                t.mul_(1 + torch.rand_like(t))
            elif t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.05)
    return net


def save_checkpoint(path: Path, net, plans: dict, configuration: str, dataset_json: dict, trainer: str,
                    fold: int | str, compiled: bool = False) -> None:
    """nnU-Net's checkpoint layout (nnUNetTrainer.save_checkpoint); ``compiled``: the state dict of the
    torch.compile wrapper (keys with ``_orig_mod.``), as a checkpoint saved from a compiled network holds."""
    weights = (torch.compile(net) if compiled else net).state_dict()
    ckpt = {
        "network_weights": weights,
        "optimizer_state": {"state": {}, "param_groups": []},
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float64(0.5)], "ema_fg_dice": [np.float64(0.5)]},
        "_best_ema": np.float64(0.5),
        "current_epoch": 2,
        "init_args": {"plans": plans, "configuration": configuration, "fold": fold, "dataset_json": dataset_json,
                      "device": torch.device("cpu")},
        "trainer_name": trainer,
        "inference_allowed_mirroring_axes": (0, 1) if configuration == "2d" else (0, 1, 2),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)


def make_model_folder(root: Path, kind: str = "plain3d", folds=(0,), compiled: bool = False,
                      dataset_json: dict | None = None) -> Path:
    """``root/Dataset990_Unit/Trainer__nnUNetPlans__Conf`` with plans.json, dataset.json and fold_F checkpoints."""
    configuration, trainer, _ = KINDS[kind]
    plans = plans_for(kind)
    dj = dataset_json or make_dataset_json()
    folder = root / plans["dataset_name"] / f"{trainer}__nnUNetPlans__{configuration}"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dj, indent=1))
    for fold in folds:
        net = trained_network(plans, configuration, dj, trainer, fold)
        save_checkpoint(folder / f"fold_{fold}" / "checkpoint_final.pth", net, plans, configuration, dj, trainer,
                        fold, compiled)
    return folder


def strip_compile_prefix(state: dict) -> dict:
    return {k.replace("_orig_mod.", ""): v for k, v in state.items()}


def eager_from_checkpoint(folder: Path, fold: int = 0):
    """The fold's network loaded with plain torch (not through the export package): the test's own yardstick."""
    plans = json.loads((folder / "plans.json").read_text())
    dj = json.loads((folder / "dataset.json").read_text())
    ckpt = torch.load(folder / f"fold_{fold}" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    net = build_network(plans, ckpt["init_args"]["configuration"], dj, trainer=ckpt["trainer_name"])
    net.decoder.deep_supervision = False
    net.load_state_dict(strip_compile_prefix(ckpt["network_weights"]))
    return net.eval(), ckpt


def run_export(path: Path, fmt: str, x: torch.Tensor) -> torch.Tensor:
    if fmt == "torchscript":
        module = torch.jit.load(str(path))
        with torch.no_grad():
            return module(x)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".nnunet-transfer-export-"))


@pytest.fixture(scope="module")
def plain_folder(tmp_path_factory) -> Path:
    """A PlainConvUNet 3d model folder with folds 0 and 1 (do not modify: copy it)."""
    return make_model_folder(tmp_path_factory.mktemp("plain"), "plain3d", folds=(0, 1))


@pytest.mark.parametrize(("kind", "fmt"), [("plain3d", "torchscript"), ("plain3d", "onnx"), ("plain2d", "torchscript"),
                                           ("plain2d", "onnx"), ("resenc3d", "torchscript"), ("resenc3d", "onnx"),
                                           ("bn3d", "onnx")])
def test_export_matches_eager(tmp_path, capsys, kind, fmt):
    """The CLI writes an export whose tensors are the checkpoint's and whose outputs match an eager network loaded
    with plain torch, on a batch size and a spatial size it was not checked on; the JSON says what was checked."""
    folder = make_model_folder(tmp_path, kind)
    out = tmp_path / "exports" / f"model.{fmt}"
    assert main(["export", str(folder), "-f", "0", "--format", fmt, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rtol 0.0001" in printed and f"wrote {out}" in printed

    meta = json.loads(metadata_path(out).read_text())
    two_d = kind == "plain2d"
    patch = [32, 32] if two_d else [16, 16, 16]
    assert meta["export"]["format"] == fmt and meta["export"]["file"] == out.name
    assert meta["export"]["dynamic_batch"] and meta["export"]["dynamic_spatial"]
    assert meta["export"]["spatial_multiple_of"] == ([4, 4] if two_d else [4, 4, 4])
    assert meta["patch_size"] == patch and meta["network"]["deep_supervision"] is False
    ver = meta["verification"]
    assert ver["tolerance"] == {"rule": "max|export - eager| <= rtol * max|eager| for each input", "rtol": 1e-4}
    assert [c["input_shape"] for c in ver["outputs"]] == [[1, 1, *patch], [2, 1, *patch],
                                                          [1, 1, 28, 36] if two_d else [1, 1, 12, 20, 12]]
    assert all(c["passed"] for c in ver["outputs"]) and ver["max_relative_diff"] <= 1e-4
    _, ckpt = eager_from_checkpoint(folder)
    weights = ver["weights"]
    assert weights["passed"] and not weights["mismatched"] and not weights["missing"]
    if fmt == "torchscript":
        assert weights["compared"] == len(ckpt["network_weights"])  # every tensor, every alias
    else:
        # unused by the forward pass without deep supervision: the lower-resolution segmentation heads only
        assert weights["compared"] > 20 and all(".seg_layers.0." in n or "num_batches_tracked" in n
                                                for n in weights["not_used"])

    net, _ = eager_from_checkpoint(folder)
    x = torch.randn(3, 1, *([24, 40] if two_d else [20, 8, 24]))
    with torch.no_grad():
        expected = net(x)
    got = run_export(out, fmt, x)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max())
    assert leftovers(out.parent) == []


def test_unknown_stride_keeps_the_patch_size(tmp_path, monkeypatch):
    """Without strides in the plans the spatial axes stay fixed: checked at batch 1 and 2 only, said in the JSON."""
    trainers = tmp_path / "trainers"
    trainers.mkdir()
    (trainers / "export_test_trainers.py").write_text(FIXED_STRIDES_TRAINER)
    monkeypatch.setenv("nnUNet_extTrainer", str(trainers))
    folder = make_model_folder(tmp_path, "nostride3d")
    out = tmp_path / "m.onnx"
    meta = export_model(folder, 0, "onnx", out).metadata
    assert meta["source"]["trainer"] == "nnUNetTrainer_ExportTestOwnStrides"
    assert meta["export"]["dynamic_spatial"] is False and meta["export"]["spatial_multiple_of"] is None
    assert meta["export"]["input"]["dims"] == ["batch", 1, 16, 16, 16]
    assert [c["input_shape"] for c in meta["verification"]["outputs"]] == [[1, 1, 16, 16, 16], [2, 1, 16, 16, 16]]
    net, _ = eager_from_checkpoint(folder)
    x = torch.randn(3, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(run_export(out, "onnx", x), net(x), rtol=0, atol=1e-4 * float(net(x).abs().max()))


def test_metadata_holds_what_inference_needs(plain_folder, tmp_path):
    out = tmp_path / "m.pt"
    result = export_model(plain_folder, 1, "torchscript", out)
    meta = result.metadata
    assert json.loads(metadata_path(out).read_text()) == json.loads(json.dumps(meta))
    ckpt_path = plain_folder / "fold_1" / "checkpoint_final.pth"
    assert meta["source"]["checkpoint_sha256"] == hashlib.sha256(ckpt_path.read_bytes()).hexdigest()
    assert meta["source"]["fold"] == "1" and meta["source"]["configuration"] == "3d_fullres"
    assert meta["source"]["trainer"] == "nnUNetTrainer" and meta["source"]["epoch"] == 2
    assert meta["channel_names"] == {"0": "MR"} and meta["spacing"] == [1.0, 1.0, 1.0]
    norm = meta["normalization"]
    assert norm[0]["scheme"] == "ZScoreNormalization" and norm[0]["intensity_properties"]["mean"] == 106.0
    assert meta["transpose_forward"] == [0, 1, 2] and meta["transpose_backward"] == [0, 1, 2]
    assert meta["inference_allowed_mirroring_axes"] == [0, 1, 2]
    assert meta["output_channels"]["names"] == ["background", "organ", "lesion"]
    assert meta["output_channels"]["activation"] == "softmax over channels"
    assert set(meta["versions"]) >= {"nnunet_transfer", "nnunetv2", "torch"} and meta["versions"]["nnunetv2"]
    assert "no sliding window" in meta["what"] and "no test-time mirroring" in meta["what"]
    # the export holds fold 1's tensors, not fold 0's
    fold1 = strip_compile_prefix(torch.load(ckpt_path, weights_only=False)["network_weights"])
    exported = torch.jit.load(str(out)).state_dict()
    assert all(torch.equal(exported[k], fold1[k]) for k in fold1)


def test_regions_are_named_in_channel_order(tmp_path):
    dj = make_dataset_json({"background": 0, "whole": [1, 2], "core": 2})
    dj["regions_class_order"] = [1, 2]
    folder = make_model_folder(tmp_path, dataset_json=dj)
    meta = export_model(folder, 0, "torchscript", tmp_path / "m.pt").metadata
    assert meta["network"]["output_channels"] == 2
    assert meta["output_channels"] == {
        "kind": "regions", "names": ["whole", "core"], "regions": [[1, 2], 2], "regions_class_order": [1, 2],
        "activation": "sigmoid per channel",
        "to_segmentation": "each channel i with sigmoid > 0.5 paints label regions_class_order[i], in channel order "
                           "(later channels overwrite earlier ones)"}


def test_checkpoint_of_a_compiled_network_exports(tmp_path):
    """Keys saved from a torch.compile wrapper (``_orig_mod.``; the wrapper's state_dict, compile itself is lazy
    and never runs here) load into the plain network and export."""
    folder = make_model_folder(tmp_path, compiled=True)
    raw = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    assert raw and all(k.startswith("_orig_mod.") for k in raw)
    out = tmp_path / "m.pt"
    meta = export_model(folder, 0, "torchscript", out).metadata
    assert meta["verification"]["weights"]["compared"] == len(raw)
    exported = torch.jit.load(str(out)).state_dict()
    assert all(torch.equal(exported[k.removeprefix("_orig_mod.")], v) for k, v in raw.items())


# ---- refusals: the export must hold exactly the chosen fold's weights ------------------------------------------


def test_random_network_is_refused(plain_folder, tmp_path):
    folder = read_model_folder(plain_folder)
    ckpt = read_fold_checkpoint(folder, 0)
    plans = json.loads((plain_folder / "plans.json").read_text())
    random_net = build_network(plans, "3d_fullres", make_dataset_json())  # never loaded: an "empty shell"
    out = tmp_path / "m.pt"
    with pytest.raises(ExportRefusedError, match=r"the network to export does not hold the weights of .*fold_0.*"
                                                 r"differ from the checkpoint's \(first: "):
        export_network(random_net, folder, ckpt, "torchscript", out)
    assert not out.exists() and not metadata_path(out).exists() and leftovers(tmp_path) == []


def test_other_folds_network_is_refused(plain_folder, tmp_path):
    folder = read_model_folder(plain_folder)
    fold1_net = build_fold_network(folder, read_fold_checkpoint(folder, 1))
    with pytest.raises(ExportRefusedError, match=r"does not hold the weights of .*fold_0/checkpoint_final.pth \(fold 0\)"):
        export_network(fold1_net, folder, read_fold_checkpoint(folder, 0), "onnx", tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_weights_that_change_while_exporting_are_caught_in_the_file(plain_folder, tmp_path, fmt):
    """A network that loads other weights when it runs (as nnU-Net's predictor loads each fold's weights only while
    predicting) passes the check before the export; the reloaded file is what is compared, and it is refused."""
    folder = read_model_folder(plain_folder)
    fold0, fold1 = read_fold_checkpoint(folder, 0), read_fold_checkpoint(folder, 1)
    network = build_fold_network(folder, fold0)

    def load_fold1(module, args):
        handle.remove()
        module.load_state_dict(fold1.state_dict)

    handle = network.register_forward_pre_hook(load_fold1)
    out = tmp_path / f"m.{fmt}"
    source = "TorchScript state_dict" if fmt == "torchscript" else "ONNX initializers"
    with pytest.raises(ExportRefusedError, match=rf"the {fmt} export does not hold the weights of .*\(fold 0\): "
                                                 rf"{source}: \d+ tensors compared; \d+ differ"):
        export_network(network, folder, fold0, fmt, out)
    assert list(tmp_path.iterdir()) == []


def test_weight_comparison_names_what_differs():
    a = {"w": torch.ones(2), "b": torch.zeros(2)}
    check = compare_weights({"w": torch.ones(2), "b": torch.ones(2), "extra": torch.ones(1)}, a, "x")
    assert not check.passed and check.mismatched == ["b"] and check.unexpected == ["extra"]
    assert compare_weights({"w": np.ones(2, dtype=np.float32)}, {"w": torch.ones(2)}, "x").passed
    half = compare_weights({"w": torch.ones(2)}, {"w": torch.ones(2, dtype=torch.float16)}, "x")
    assert half.passed  # a float16 checkpoint in a float32 network: the upcast is exact
    missing = compare_weights({"a": torch.ones(1)}, {"a": torch.ones(1), "b": torch.ones(1)}, "x",
                              required=[("a",), ("b", "b_alias")])
    assert missing.missing == ["b"] and "1 missing (first: b)" in missing.describe()


# ---- the CLI: refusals exit 1, bad input exits 2, one line, nothing written ------------------------------------


def export_cli(capsys, *args) -> tuple[int, str]:
    code = main(["export", *map(str, args)])
    err = capsys.readouterr().err
    return code, err


def assert_one_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnunet-transfer export: error: "), err
    for f in fragments:
        assert f in lines[0], err


def test_checkpoint_copied_from_another_fold_is_refused(plain_folder, tmp_path, capsys):
    folder = tmp_path / plain_folder.name
    shutil.copytree(plain_folder, folder)
    shutil.copy(folder / "fold_0" / "checkpoint_final.pth", folder / "fold_1" / "checkpoint_final.pth")
    out = tmp_path / "m.pt"
    code, err = export_cli(capsys, folder, "-f", "1", "--format", "torchscript", "-o", out)
    assert code == 1
    assert_one_line(err, "holds the weights of fold 0 (init_args.fold), not of fold 1")
    assert not out.exists() and not metadata_path(out).exists()


def _rewrite_checkpoint(path: Path, change) -> None:
    ckpt = torch.load(path, weights_only=False)
    change(ckpt)
    torch.save(ckpt, path)


@pytest.mark.parametrize(("change", "code", "fragment"), [
    (lambda c: c["network_weights"].pop("decoder.seg_layers.1.weight"), 1,
     "tensor(s) missing from the checkpoint (first: decoder.seg_layers.1.weight)"),
    (lambda c: c["network_weights"].update({"decoder.seg_layers.1.bias": torch.zeros(5)}), 1,
     "with other shapes (first: decoder.seg_layers.1.bias: checkpoint (5,) vs network (3,))"),
    (lambda c: c["network_weights"]["encoder.stages.0.0.convs.0.conv.weight"].view(-1)[0].fill_(float("nan")), 2,
     "holds NaN or Inf values"),
    (lambda c: c.update(trainer_name="nnUNetTrainerNotInstalled"), 2,
     "trainer 'nnUNetTrainerNotInstalled': not found"),
], ids=["missing-key", "other-shape", "nan", "unknown-trainer"])
def test_tampered_checkpoint_is_refused(plain_folder, tmp_path, capsys, change, code, fragment):
    folder = tmp_path / plain_folder.name
    shutil.copytree(plain_folder, folder)
    _rewrite_checkpoint(folder / "fold_0" / "checkpoint_final.pth", change)
    out = tmp_path / "m.pt"
    got, err = export_cli(capsys, folder, "-f", "0", "--format", "torchscript", "-o", out)
    assert got == code
    assert_one_line(err, fragment)
    assert not out.exists() and leftovers(tmp_path) == []


def someones_own(folder: Path, root: Path) -> Path:
    """A copy of ``folder`` as a model trained with someone's own nnUNetTrainer subclass, not installed here (the
    usual downloaded model): the folder and every checkpoint name nnUNetTrainer_SomeonesOwn."""
    copy_ = root / folder.parent.name / f"nnUNetTrainer_SomeonesOwn__{folder.name.split('__', 1)[1]}"
    shutil.copytree(folder, copy_)
    for ckpt in copy_.glob("fold_*/checkpoint_final.pth"):
        _rewrite_checkpoint(ckpt, lambda c: c.update(trainer_name="nnUNetTrainer_SomeonesOwn"))
    return copy_


def test_a_trainer_not_installed_here_needs_trainer_and_then_exports(plain_folder, tmp_path, capsys):
    """Refused by default (exit 2, one line naming --trainer); with --trainer nnUNetTrainer the network of the plans
    is built by nnU-Net's trainer, holds the fold's weights, and the export computes what the eager network does."""
    folder = someones_own(plain_folder, tmp_path / "results")
    out = tmp_path / "m.pt"
    code, err = export_cli(capsys, folder, "-f", "0", "--format", "torchscript", "-o", out)
    assert code == 2
    assert_one_line(err, "checkpoint_final.pth: trainer 'nnUNetTrainer_SomeonesOwn': not found",
                    "give --trainer NAME (Python: trainer=NAME)")
    assert not out.exists() and not metadata_path(out).exists()

    code, err = export_cli(capsys, folder, "-f", "0", "--format", "torchscript", "-o", out, "--trainer",
                           "nnUNetTrainer")
    assert code == 0, err
    meta = json.loads(metadata_path(out).read_text())
    assert meta["source"]["trainer"] == "nnUNetTrainer_SomeonesOwn"
    assert meta["source"]["network_built_by"] == "nnUNetTrainer"
    eager, _ = eager_from_checkpoint(plain_folder)  # the same weights, loaded with plain torch
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(run_export(out, "torchscript", x), eager(x), rtol=1e-4, atol=1e-5)
    # the API takes the same choice
    result = export_model(folder, 0, "torchscript", tmp_path / "api.pt", trainer="nnUNetTrainer")
    assert result.metadata["source"]["network_built_by"] == "nnUNetTrainer"


def test_trainer_that_builds_another_network_is_refused(tmp_path, capsys):
    """--trainer nnUNetTrainer on a BatchNorm model (its trainer not installed here): the checkpoint does not fit
    the network nnUNetTrainer builds (running statistics), exit 1, nothing written."""
    folder = someones_own(make_model_folder(tmp_path / "bn", "bn3d"), tmp_path / "results")
    out = tmp_path / "m.pt"
    code, err = export_cli(capsys, folder, "-f", "0", "--format", "torchscript", "-o", out, "-tr", "nnUNetTrainer")
    assert code == 1
    assert_one_line(err, "does not fit the network nnUNetTrainer builds", "not in the network (first: ",
                    "running_mean")
    assert not out.exists() and not metadata_path(out).exists()


BAD_INPUTS = [
    ("missing-fold", "fold 3: "),
    ("missing-configuration", "configuration '3d_lowres' (from the folder name) is not in"),
    ("dataset-folder", "holds model folders, it is not one (no plans.json); give one of them: nnUNetTrainer__"),
    ("no-such-folder", "no such folder"),
    ("unknown-format", "--format 'tflite': unknown format; choose torchscript or onnx"),
    ("missing-checkpoint", "checkpoint_best.pth: not found (checkpoints in fold_0: checkpoint_final.pth; choose one "
                           "with -chk)"),
    ("existing-output", "exists already; choose another name or pass --overwrite"),
    ("onnx-missing", "pip install 'nnunet-transfer[onnx]'"),
    ("patch-does-not-fit", "cannot run on an input of the plans' patch size (1, 1, 16, 16, 18): RuntimeError: "),
]


@pytest.mark.parametrize(("case", "fragment"), [pytest.param(c, f, id=c) for c, f in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_nothing_written(plain_folder, tmp_path, capsys, monkeypatch, case, fragment):
    folder, fold, fmt, extra = plain_folder, "0", "torchscript", []
    out = tmp_path / "out" / "m.pt"
    if case == "missing-fold":
        fold = "3"
    elif case == "missing-configuration":
        folder = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_lowres"
        shutil.copytree(plain_folder, folder)
    elif case == "dataset-folder":
        folder = plain_folder.parent
    elif case == "no-such-folder":
        folder = tmp_path / "nowhere"
    elif case == "unknown-format":
        fmt = "tflite"
    elif case == "missing-checkpoint":
        extra = ["-chk", "checkpoint_best.pth"]
    elif case == "existing-output":
        out.parent.mkdir()
        out.write_text("keep me")
    elif case == "patch-does-not-fit":
        folder = tmp_path / plain_folder.name
        shutil.copytree(plain_folder, folder)
        plans = json.loads((folder / "plans.json").read_text())
        plans["configurations"]["3d_fullres"]["patch_size"] = [16, 16, 18]
        (folder / "plans.json").write_text(json.dumps(plans))
    elif case == "onnx-missing":
        fmt = "onnx"
        monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: import fails
    code, err = export_cli(capsys, folder, "-f", fold, "--format", fmt, "-o", out, *extra)
    assert code == 2
    assert_one_line(err, fragment)
    if case == "existing-output":
        assert out.read_text() == "keep me" and not metadata_path(out).exists()
    else:
        assert not out.parent.exists()


def test_overwrite_replaces_both_files(plain_folder, tmp_path, capsys):
    out = tmp_path / "m.pt"
    out.write_text("old")
    metadata_path(out).write_text("old")
    assert main(["export", str(plain_folder), "-f", "0", "--format", "torchscript", "-o", str(out),
                 "--overwrite"]) == 0
    assert json.loads(metadata_path(out).read_text())["source"]["fold"] == "0"
    assert torch.jit.load(str(out)).state_dict()


def test_console_script_bad_fold(plain_folder, tmp_path):
    """Through the installed entry point: the message, exit 2, no traceback, nothing written."""
    out = tmp_path / "m.onnx"
    proc = cli("export", plain_folder, "-f", "7", "--format", "onnx", "-o", out)
    assert_clean_error(proc, 2, f"fold 7: {plain_folder / 'fold_7'} not found (folds in {plain_folder}: 0, 1)")
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()


def test_check_inputs_and_paths(plain_folder):
    assert second_spatial_size([16, 16, 16], [4, 4, 4]) == [12, 20, 12]
    assert second_spatial_size([8, 32], [8, 4]) == [16, 36]  # one stride less would leave less than a stride: more
    assert input_shapes(2, [32, 32], [4, 4], True) == [(1, 2, 32, 32), (2, 2, 32, 32), (1, 2, 28, 36)]
    assert input_shapes(1, [16, 16], [4, 4], False) == [(1, 1, 16, 16), (2, 1, 16, 16)]
    assert metadata_path("a/model.onnx") == Path("a/model.onnx.json")
    with pytest.raises(ExportError, match=r"fold 'x': give a fold number"):
        read_fold_checkpoint(read_model_folder(plain_folder), "x")
