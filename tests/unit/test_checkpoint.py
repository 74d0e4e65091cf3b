"""Reading checkpoints: containers, formats, prefixes, and every kind of bad input."""

from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from nnunet_transfer import load_pretrained, read_checkpoint
from nnunet_transfer.errors import CheckpointError, LoadGuardError, NonFiniteWeightsError, UnsafeCheckpointError


def _state(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def _assert_all_loaded(report, net, source_net):
    assert report.coverage == 1.0
    assert {r.status for r in report.tensors} == {"loaded"}
    assert report.unused_source_keys == []
    for (k, a), b in zip(net.state_dict().items(), source_net.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def _prefixed(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


CONTAINERS = {
    "plain": lambda sd: sd,
    "nnunet": lambda sd: {"network_weights": sd, "current_epoch": 3, "optimizer_state": {}, "trainer_name": "x"},
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 1},
    "model_state_dict": lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}},
    "model": lambda sd: {"model": sd},
    "net": lambda sd: {"net": sd},
    "module": lambda sd: {"module": sd},
    "ema only": lambda sd: {"model_ema": sd, "meta": {"note": "teacher"}},
    "nested model.module": lambda sd: {"model": {"module": sd}, "epoch": 2},
    "ddp keys": lambda sd: {"state_dict": _prefixed(sd, "module.")},
    "compiled keys": lambda sd: _prefixed(sd, "_orig_mod."),
    "ddp+compiled": lambda sd: _prefixed(sd, "module._orig_mod."),
    "compiled+ddp": lambda sd: _prefixed(sd, "_orig_mod.module."),
    "lightning": lambda sd: {"state_dict": _prefixed(sd, "model."), "epoch": 5, "global_step": 10,
                             "hyper_parameters": {"lr": 0.01}, "pytorch-lightning_version": "2.4.0"},
    "lightning compiled": lambda sd: {"state_dict": _prefixed(sd, "net._orig_mod."), "epoch": 5},
    "mmengine": lambda sd: {"meta": {"epoch": 3, "mmengine_version": "0.10"}, "state_dict": _prefixed(sd, "backbone."),
                            "message_hub": {"runtime_info": {}}},
}


@pytest.mark.parametrize("kind", list(CONTAINERS))
def test_containers_and_prefixes_load_exactly(kind, tmp_path, unet_factory):
    src = unet_factory(seed=1)
    sd = CONTAINERS[kind](src.state_dict())
    path = tmp_path / "ckpt.pth"
    torch.save(sd, path)
    net = unet_factory(seed=2)
    report = load_pretrained(net, path)
    _assert_all_loaded(report, net, src)


def test_mmengine_backbone_maps_to_encoder_and_reports_head_unused(tmp_path, unet_factory):
    src = unet_factory(seed=1)
    enc = {k[len("encoder."):]: v for k, v in src.state_dict().items() if k.startswith("encoder.")}
    ckpt = {"meta": {}, "state_dict": {**_prefixed(enc, "backbone."), "head.fc.weight": torch.zeros(2, 16),
                                       "head.fc.bias": torch.zeros(2)}}
    torch.save(ckpt, tmp_path / "mm.pth")
    net = unet_factory(seed=2)
    report = load_pretrained(net, tmp_path / "mm.pth", min_coverage=0.0)
    enc_records = [r for r in report.tensors if r.key.startswith("encoder.")]
    assert enc_records and all(r.status == "loaded" for r in enc_records)
    assert all(r.source_key.startswith("backbone.") for r in enc_records)
    assert sorted(report.unused_source_keys) == ["head.fc.bias", "head.fc.weight"]
    assert "'backbone.' -> 'encoder.'" in report.key_rules


def test_legacy_pickle_format(tmp_path, unet_factory):
    src = unet_factory(seed=1)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    ckpt = read_checkpoint(tmp_path / "old.pth")
    assert ckpt.format == "torch-pickle"
    net = unet_factory(seed=2)
    _assert_all_loaded(load_pretrained(net, ckpt), net, src)


def test_safetensors(tmp_path, unet_factory):
    src = unet_factory(seed=1)
    # safetensors refuses shared tensors: save each distinct tensor once, as safetensors' own save_model does
    seen, unique = set(), {}
    for k, v in src.state_dict().items():
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            unique[k] = v.contiguous()
    save_file(unique, tmp_path / "w.safetensors")
    ckpt = read_checkpoint(tmp_path / "w.safetensors")
    assert ckpt.format == "safetensors" and ckpt.container == ""
    net = unet_factory(seed=2)
    _assert_all_loaded(load_pretrained(net, ckpt), net, src)


def test_nnunet_metadata_is_read(tmp_path, unet_factory):
    sd = unet_factory().state_dict()
    plans = {"plans_name": "P", "configurations": {"3d_fullres": {}}}
    torch.save({"network_weights": sd, "init_args": {"plans": plans, "configuration": "3d_fullres",
                "dataset_json": {"labels": {"background": 0, "a": 1}}, "device": torch.device("cpu")},
                "trainer_name": "nnUNetTrainer", "current_epoch": 7, "_best_ema": __import__("numpy").float32(0.5)},
               tmp_path / "c.pth")
    ckpt = read_checkpoint(tmp_path / "c.pth")
    assert ckpt.plans == plans and ckpt.configuration == "3d_fullres"
    assert ckpt.dataset_json["labels"] == {"background": 0, "a": 1}
    assert ckpt.trainer_name == "nnUNetTrainer" and ckpt.metadata["current_epoch"] == 7
    n, nbytes = ckpt.unique_tensors()
    distinct = {id(t): t for t in unet_factory().state_dict(keep_vars=True).values()}
    assert n == len(distinct) < len(ckpt.state_dict)  # decoder.encoder.* and all_modules.* aliases counted once
    assert nbytes == sum(t.numel() * t.element_size() for t in distinct.values())


# --- bad input --------------------------------------------------------------------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pth: no such file"):
        read_checkpoint(tmp_path / "nope.pth")


def test_directory(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        read_checkpoint(tmp_path)


def test_zero_length(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth: the file is empty"):
        read_checkpoint(tmp_path / "empty.pth")


def test_random_bytes(tmp_path):
    (tmp_path / "rand.pth").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match=r"rand\.pth: not a PyTorch or safetensors checkpoint"):
        read_checkpoint(tmp_path / "rand.pth")


@pytest.mark.parametrize("fraction", [0.3, 0.9])
def test_truncated_zip(tmp_path, unet_factory, fraction):
    torch.save({"network_weights": unet_factory().state_dict()}, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match=r"cut\.pth: truncated or corrupt"):
        read_checkpoint(tmp_path / "cut.pth")


def test_truncated_safetensors(tmp_path):
    save_file({"a": torch.zeros(1000)}, tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: corrupt or truncated"):
        read_checkpoint(tmp_path / "cut.safetensors")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True])
def test_pickle_that_would_run_code_is_refused_and_not_run(tmp_path, legacy):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "evil": _RunsCode(marker)}, tmp_path / "evil.pth",
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pth: refusing to unpickle global\(s\) (posix|os)\.system") as e:
        read_checkpoint(tmp_path / "evil.pth")
    assert "--trust-checkpoint" in str(e.value) and "--allow-global" in str(e.value)
    assert not marker.exists()


def test_raw_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "raw.pkl")
    assert not marker.exists()


def test_extra_global_needs_explicit_opt_in(tmp_path, unet_factory):
    sd = unet_factory().state_dict()
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1)}, tmp_path / "ns.pth")
    with pytest.raises(UnsafeCheckpointError, match=r"argparse\.Namespace") as e:
        read_checkpoint(tmp_path / "ns.pth")
    assert e.value.globals_needed == ["argparse.Namespace"]
    assert read_checkpoint(tmp_path / "ns.pth", allow_globals=["argparse.Namespace"]).container == "state_dict"
    assert read_checkpoint(tmp_path / "ns.pth", trust_checkpoint=True).metadata["args"].lr == 0.1


def test_empty_state_dict(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "e.pth")
    with pytest.raises(CheckpointError, match=r"e\.pth: .*no weights found|e\.pth: the state dict"):
        read_checkpoint(tmp_path / "e.pth")
    torch.save({}, tmp_path / "e2.pth")
    with pytest.raises(CheckpointError, match=r"e2\.pth"):
        read_checkpoint(tmp_path / "e2.pth")


def test_unknown_container_names_entries_and_option(tmp_path):
    torch.save({"epoch": 3, "my_weights_here": {"inner": {"w": 1}}}, tmp_path / "u.pth")
    with pytest.raises(CheckpointError, match=r"u\.pth: no weights found.*my_weights_here.*--container"):
        read_checkpoint(tmp_path / "u.pth")


def test_explicit_container(tmp_path, unet_factory):
    src = unet_factory(seed=1)
    torch.save({"state_dict": unet_factory(seed=5).state_dict(), "ema": {"module": src.state_dict()}},
               tmp_path / "e.pth")
    ckpt = read_checkpoint(tmp_path / "e.pth", container="ema")
    assert ckpt.container == "ema.module"
    net = unet_factory(seed=2)
    _assert_all_loaded(load_pretrained(net, ckpt), net, src)
    with pytest.raises(CheckpointError, match="container entry 'nope' not found"):
        read_checkpoint(tmp_path / "e.pth", container="nope")


def test_nan_weights_are_an_error_and_nothing_is_loaded(tmp_path, unet_factory):
    sd = unet_factory(seed=1).state_dict()
    key = "decoder.stages.0.convs.0.conv.weight"
    sd[key] = sd[key].clone()
    sd[key][0, 0, 0, 0, 0] = float("nan")
    sd["encoder.stages.0.0.convs.0.conv.bias"] = torch.full_like(sd["encoder.stages.0.0.convs.0.conv.bias"], float("inf"))
    torch.save(sd, tmp_path / "nan.pth")
    net = unet_factory(seed=2)
    before = _state(net)
    with pytest.raises(NonFiniteWeightsError, match=r"nan\.pth: NaN/Inf values .*decoder\.stages\.0\.convs\.0\.conv\.weight \(1 of"):
        load_pretrained(net, tmp_path / "nan.pth")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_unrelated_model_fails_the_guard_and_leaves_the_network_untouched(tmp_path, unet_factory):
    resnet_like = {"conv1.weight": torch.randn(64, 3, 7, 7), "fc.weight": torch.randn(10, 512), "fc.bias": torch.zeros(10)}
    torch.save({"state_dict": resnet_like}, tmp_path / "resnet.pth")
    net = unet_factory(seed=2)
    before = _state(net)
    with pytest.raises(LoadGuardError, match=r"resnet\.pth: only 0\.0% of the network's parameters.*missing") as e:
        load_pretrained(net, tmp_path / "resnet.pth")
    assert e.value.report.coverage == 0.0
    assert sorted(e.value.report.unused_source_keys) == sorted(resnet_like)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
