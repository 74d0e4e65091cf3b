"""One option schema: LoadOptions is the recipe's pretrained section and the source of the CLI's loader flags."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch
import yaml
from helpers import bin_path, make_unet, run
from pydantic import ValidationError

from nnunet_transfer import LoadGuardError, LoadOptions, load_pretrained
from nnunet_transfer.cli import build_parser
from nnunet_transfer.cli._common import load_flag, load_options_from_args
from nnunet_transfer.core.loading.keys import normalize_keys
from nnunet_transfer.core.schedules.recipes import PretrainedSpec, Recipe
from nnunet_transfer.errors import TransferError

LABELS = {"background": 0, "organ": 1, "lesion": 2}


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _load_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """{flag: dest} of the parser's loader-option flags."""
    group = next(g for g in parser._action_groups if g.title.startswith("loader options"))
    return {a.option_strings[0]: a.dest for a in group._group_actions}


def test_recipe_pretrained_section_is_the_schema_plus_checkpoint_and_required():
    assert issubclass(PretrainedSpec, LoadOptions)
    assert set(PretrainedSpec.model_fields) == set(LoadOptions.model_fields) | {"checkpoint", "required"}
    for name, field in LoadOptions.model_fields.items():
        assert field.description, name  # every option documents itself (the CLI help is made of it)
        assert PretrainedSpec.model_fields[name].default == field.default, name
    spec = Recipe.model_validate({"name": "r", "pretrained": {"checkpoint": "c.pth", "required": False,
                                                              "min_coverage": 0.7, "rename": ["a=b"]}}).pretrained
    opts = spec.load_options()
    assert type(opts) is LoadOptions and opts == LoadOptions(min_coverage=0.7, rename=[("a", "b")])
    with pytest.raises(ValidationError, match="head_patern"):
        PretrainedSpec(head_patern="x")  # unknown keys name the field


def test_every_cli_load_flag_maps_to_a_schema_field():
    flags = _load_flags(_subparser("check"))
    assert set(flags.values()) == set(LoadOptions.model_fields) - {"key_map"}  # key_map: Python API only
    assert {flag: load_flag(dest) for flag, dest in flags.items()} == {flag: flag for flag in flags}
    # today's flag names keep working; bools defaulting to True are switched off with --no-
    assert {"--min-coverage", "--rename", "--container", "--allow-global", "--trust-checkpoint", "--head-pattern",
            "--no-adapt-input-channels", "--no-adapt-kernels", "--no-map-heads", "--load-decoder"} == set(flags)
    assert set(_load_flags(_subparser("inspect"))) == {"--container", "--allow-global", "--trust-checkpoint"}
    assert set(_load_flags(_subparser("plans"))) == {"--min-coverage", "--allow-global", "--trust-checkpoint"}


def test_cli_flags_build_options_and_override_only_what_was_given():
    parser = build_parser()
    args = parser.parse_args(["check", "c.pth", "-d", "1", "-c", "3d_fullres", "--rename", r"a\.(.*)=b.\1",
                              "--rename", "x=y", "--allow-global", "argparse.Namespace", "--no-map-heads",
                              "--min-coverage", "0.7", "--trust-checkpoint"])
    assert load_options_from_args(args) == LoadOptions(
        rename=[(r"a\.(.*)", r"b.\1"), ("x", "y")], allow_globals=["argparse.Namespace"], map_heads=False,
        min_coverage=0.7, trust_checkpoint=True)
    base = LoadOptions(min_coverage=0.9, map_heads=False, container="ema", rename=["p=q"])
    args = parser.parse_args(["check", "-d", "1", "-c", "3d_fullres", "--min-coverage", "0.2"])
    assert load_options_from_args(args, base) == base.replace(min_coverage=0.2)
    args = parser.parse_args(["check", "-d", "1", "-c", "3d_fullres"])
    assert load_options_from_args(args, base) is base
    assert load_options_from_args(args) == LoadOptions()


def test_bad_values_name_the_rule_or_flag():
    with pytest.raises(ValidationError, match=r"rename rule 'nope' must look like PATTERN=REPLACEMENT"):
        LoadOptions(rename=["ok=fine", "nope"])
    with pytest.raises(ValidationError, match=r"rename rule \('\(\[x', 'y'\): invalid regular expression"):
        LoadOptions(rename=[("([x", "y")])
    with pytest.raises(ValidationError, match=r"rename rule \('a', 'b', 'c'\) must be"):
        LoadOptions(rename=[("a", "b", "c")])
    with pytest.raises(ValidationError, match=r"head_pattern '\(' is not a valid regular expression"):
        LoadOptions(head_pattern="(")
    args = build_parser().parse_args(["check", "c", "-d", "1", "-c", "x", "--rename", "nope", "--min-coverage", "2"])
    with pytest.raises(TransferError, match=r"--min-coverage: .*less than or equal to 1; --rename: rename rule 'nope'"):
        load_options_from_args(args)


def test_unknown_options_are_type_errors_and_options_are_frozen():
    with pytest.raises(TypeError, match=r"unknown loader option\(s\) \['min_coverge'\]; known: .*'min_coverage'"):
        LoadOptions.from_kwargs(min_coverge=0.3)
    with pytest.raises(TypeError, match=r"unknown loader option\(s\) \['nope'\]"):
        LoadOptions().replace(nope=1)
    opts = LoadOptions.from_kwargs(rename=[["a", "b"]], allow_globals=["x"])
    assert opts.rename == (("a", "b"),) and opts.allow_globals == ("x",)
    with pytest.raises(ValidationError, match="frozen"):
        opts.min_coverage = 0.1
    from nnunet_transfer.core.loading.loader import LoadOptions as FromLoader

    assert FromLoader is LoadOptions


def test_dumps_round_trip_and_leave_key_map_out():
    def key_map(k: str) -> str:
        return k

    opts = LoadOptions(rename=[r"a\.(.*)=b.\1", ("x=y", "z")], key_map=key_map, allow_globals=["g"])
    data = opts.model_dump(mode="json")
    assert "key_map" not in data and data["rename"] == [r"a\.(.*)=b.\1", ["x=y", "z"]]  # "=" in a pattern: a pair
    assert LoadOptions.model_validate(json.loads(json.dumps(data))) == opts.replace(key_map=None)
    recipe = Recipe.model_validate({"name": "r", "pretrained": opts.fields_dict()})
    text = yaml.safe_dump(recipe.model_dump(mode="json"))  # what the trainer writes beside the fold
    assert "key_map" not in text
    assert Recipe.model_validate(yaml.safe_load(text)).pretrained.rename == opts.rename


def _save(sd, path):
    torch.save({"network_weights": sd, "init_args": {"dataset_json": {"labels": LABELS}}}, path)
    return path


def test_key_map_renames_and_drops_before_the_other_rules(tmp_path):
    src, net = make_unet(seed=1), make_unet(seed=2)
    sd = {k.replace(".", "/"): v for k, v in src.state_dict().items()}  # as in a Keras / JAX export
    sd["aux.logits.weight"] = torch.zeros(7)  # an auxiliary head the target does not have
    ckpt = _save(sd, tmp_path / "c.pth")
    with pytest.raises(LoadGuardError, match=r"only 0\.0% of the network's parameters"):
        load_pretrained(make_unet(seed=2), ckpt, LABELS)  # no prefix rule can map these keys

    def key_map(key: str) -> str | None:
        return None if key.startswith("aux.") else "module." + key.replace("/", ".")  # wrappers stripped after

    report = load_pretrained(net, ckpt, LABELS, LoadOptions(key_map=key_map))
    assert report.coverage == 1.0 and report.unused_source_keys == []  # dropped keys are not "unused"
    for k, v in net.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k
    n = len(src.state_dict())
    assert report.key_rules.startswith(f"key_map renamed {n} keys and dropped 1; wrapper prefixes")
    assert any("1 checkpoint keys dropped by key_map: ['aux.logits.weight']" in note for note in report.notes)
    # as a keyword override too
    assert load_pretrained(make_unet(seed=3), ckpt, LABELS, key_map=key_map, dry_run=True).coverage == 1.0
    # order: key_map, then rename rules (which see its output), then wrappers
    m = normalize_keys(["a.w", "b.w"], rename=[(r"x\.(.*)", r"module.y.\1")],
                       key_map=lambda k: None if k == "b.w" else "x." + k)
    assert m.names == {"a.w": "y.a.w"} and m.dropped == ["b.w"] and (m.mapped, m.renamed) == (1, 1)
    with pytest.raises(TypeError, match=r"key_map returned int for checkpoint key 'a\.w'"):
        normalize_keys(["a.w"], key_map=lambda k: 3)


def test_load_pretrained_takes_options_and_keyword_overrides(tmp_path):
    ckpt = _save(make_unet(seed=1).state_dict(), tmp_path / "c.pth")
    spec = PretrainedSpec(map_heads=False, min_coverage=0.9, checkpoint="elsewhere.pth")
    report = load_pretrained(make_unet(seed=2), ckpt, LABELS, spec.load_options(), min_coverage=0.8)
    assert report.min_coverage == 0.8
    assert {r.code for r in report.tensors if r.is_head} == {"head_off"}
    with pytest.raises(TypeError, match="options must be a LoadOptions, not dict"):
        load_pretrained(make_unet(seed=2), ckpt, LABELS, {"map_heads": False})


# --- check --recipe: the dry run of exactly the load the trainer will do -------------------------------------------
def _target_dataset(root):
    """A preprocessed nnU-Net dataset folder (plans + dataset.json) whose 3d_fullres network is make_unet()'s."""
    folder = root / "preprocessed" / "Dataset990_Opts"
    folder.mkdir(parents=True)
    (root / "raw").mkdir()
    (root / "results").mkdir()
    kwargs = {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
              "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
              "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
              "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
              "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
              "nonlin_kwargs": {"inplace": True}}
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": kwargs, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    plans = {"dataset_name": folder.name, "plans_name": "nnUNetPlans", "label_manager": "LabelManager",
             "configurations": {"3d_fullres": {"architecture": arch, "patch_size": [16, 16, 16], "spacing": [1, 1, 1]}}}
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS,
                                                     "numTraining": 1, "file_ending": ".nii.gz"}))
    env = {**os.environ, "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
           "nnUNet_results": str(root / "results"), "OMP_NUM_THREADS": "1"}
    return env


def test_check_uses_the_recipes_pretrained_section_and_checkpoint(tmp_path):
    env = _target_dataset(tmp_path)
    # the checkpoint lacks one decoder stage: coverage between the default guard (0.5) and the recipe's 0.99
    sd = {k: v for k, v in make_unet(seed=1).state_dict().items() if not k.startswith("decoder.stages.1.")}
    (tmp_path / "ckpt").mkdir()
    _save(sd, tmp_path / "ckpt" / "pretrained.pth")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\npretrained:\n  checkpoint: ckpt/pretrained.pth\n  min_coverage: 0.99\n"
                      "  map_heads: false\n")
    cli = [bin_path("nnunet-transfer"), "check", "-d", "990", "-c", "3d_fullres", "--recipe", str(recipe)]

    proc = run([*cli, "--json", str(tmp_path / "r.json")], env, check=False)  # no CHECKPOINT: the recipe's
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "loader options from recipe r" in proc.stdout
    assert "FAIL: coverage" in proc.stderr and "missing from the checkpoint [missing]" in proc.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["checkpoint"].endswith("ckpt/pretrained.pth") and data["min_coverage"] == 0.99
    assert 0.5 < data["coverage"] < 0.99
    assert {t["code"] for t in data["tensors"] if t["is_head"]} == {"head_off"}  # the recipe's map_heads: false

    # an explicit flag overrides that one option; the rest of the recipe stays
    proc = run([*cli, "--min-coverage", "0.5", "--json", str(tmp_path / "r2.json")], env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "r2.json").read_text())
    assert data["min_coverage"] == 0.5 and {t["code"] for t in data["tensors"] if t["is_head"]} == {"head_off"}

    # neither CHECKPOINT nor pretrained.checkpoint: a usage error
    proc = run([*cli[:-1], "quick"], env, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no checkpoint to check: give CHECKPOINT, or a --recipe whose pretrained.checkpoint names one" in proc.stderr


def test_check_tr_names_the_trainer_that_builds_the_network(tmp_path, monkeypatch, capsys):
    """check's -tr is the trainer whose network is built: one not installed here is a one-line usage error that points
    at -tr (the same idea as export's and share's --trainer, one flag)."""
    from nnunet_transfer.cli import main

    env = _target_dataset(tmp_path)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, env[key])
    _save(make_unet(seed=1).state_dict(), tmp_path / "pretrained.pth")
    args = ["check", str(tmp_path / "pretrained.pth"), "-d", "990", "-c", "3d_fullres"]
    assert main([*args, "-tr", "nnUNetTrainer"]) == 0
    capsys.readouterr()
    assert main([*args, "-tr", "nnUNetTrainer_SomeonesOwn"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nnunet-transfer check: error: -tr nnUNetTrainer_SomeonesOwn: trainer "
                                               "'nnUNetTrainer_SomeonesOwn': not found")
    assert "-tr names the trainer whose network is built (leave it out for nnU-Net's nnUNetTrainer)" in err[0]


def test_check_of_the_lora_trainer_reports_its_adapters_new_and_counts_pretrained_weights_only(tmp_path, monkeypatch,
                                                                                               capsys):
    """``check -tr nnUNetTrainerAdaptiveFT_LoRA``: the network the trainer builds, adapters included; they are new,
    outside the coverage, and every pretrained weight loads into its base layer."""
    from nnunet_transfer.cli import main

    env = _target_dataset(tmp_path)
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.delenv("NNUNET_TRANSFER_RECIPE", raising=False)
    _save(make_unet(seed=1).state_dict(), tmp_path / "pretrained.pth")
    args = ["check", str(tmp_path / "pretrained.pth"), "-d", "990", "-c", "3d_fullres", "--json"]
    assert main([*args, str(tmp_path / "lora.json"), "-tr", "nnUNetTrainerAdaptiveFT_LoRA"]) == 0
    assert main([*args, str(tmp_path / "plain.json"), "-tr", "nnUNetTrainerAdaptiveFT"]) == 0
    lora, plain = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("lora", "plain"))
    new = [t for t in lora["tensors"] if t["status"] == "new"]
    assert new and all(".lora_" in t["key"] and t["code"] == "adapter" and not t["in_coverage"] for t in new)
    assert lora["coverage"] == plain["coverage"] == 1.0
    loaded = {t["key"].replace(".base_layer", "") for t in lora["tensors"] if t["status"] == "loaded"}
    assert loaded == {t["key"] for t in plain["tensors"] if t["status"] == "loaded"}
    assert any(".base_layer." in t["key"] for t in lora["tensors"] if t["status"] == "loaded")
