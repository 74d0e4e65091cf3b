"""Pretrained encoders: rebuilt from the checkpoint's plans (2d / 3d, PlainConvUNet / ResEnc), loaded tensors equal
the checkpoint's, a (partly) random encoder refused, features per stage, and the architecture declarations."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import make_dataset_json, make_plans
from torch import nn

from nnunet_transfer.core.architectures import EncoderLayout, architecture_for
from nnunet_transfer.encoders import PretrainedEncoder, build_encoder, encoder_layout, load_encoder, resolve_features
from nnunet_transfer.errors import ArchitectureError, LoadGuardError, MissingTrainerWarning, PlansError
from nnunet_transfer.nnunet.networks import build_network

FEATURES = (4, 8, 16)


def encoder_plans(residual: bool = False, norm_op: str = "torch.nn.modules.instancenorm.InstanceNorm3d") -> dict:
    """:func:`helpers.make_plans` (3d_fullres, PlainConvUNet) plus a 2d configuration; ResidualEncoderUNet (as
    nnU-Net's ResEnc planners write it) for both when ``residual``."""
    plans = make_plans(features=FEATURES, norm_op=norm_op)
    c3 = plans["configurations"]["3d_fullres"]
    c2 = copy.deepcopy(c3)
    c2.update(data_identifier="nnUNetPlans_2d", patch_size=[32, 32], median_image_size_in_voxels=[32.0, 32.0],
              spacing=[1.0, 1.0], batch_size=4)
    kw2 = c2["architecture"]["arch_kwargs"]
    kw2.update(conv_op="torch.nn.modules.conv.Conv2d", kernel_sizes=[[3, 3]] * 3, strides=[[1, 1], [2, 2], [2, 2]],
               norm_op=norm_op.replace("3d", "2d"))
    plans["configurations"]["2d"] = c2
    if residual:
        for conf in (c2, c3):
            arch = conf["architecture"]
            arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
            arch["arch_kwargs"]["n_blocks_per_stage"] = [1, 1, 1]
            del arch["arch_kwargs"]["n_conv_per_stage"]
    return plans


def save_checkpoint(path, plans: dict, configuration: str, *, seed: int = 1, state=None, trainer="nnUNetTrainer"):
    """A checkpoint in nnU-Net's format for the network these plans build; weights shifted by 0.25 so that no fresh
    initialisation can equal them. ``state``: a function changing the state dict before it is saved."""
    dj = make_dataset_json()
    torch.manual_seed(seed)
    net = build_network(plans, configuration, dj, trainer)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.25)
    sd = net.state_dict()
    if state is not None:
        sd = state(sd)
    torch.save({"network_weights": sd, "optimizer_state": None, "current_epoch": 3, "trainer_name": trainer,
                "init_args": {"plans": plans, "configuration": configuration, "fold": 0, "dataset_json": dj,
                              "device": torch.device("cpu")},
                "inference_allowed_mirroring_axes": (0, 1, 2)}, path)
    return path, net


@pytest.mark.parametrize("residual", [False, True], ids=["PlainConvUNet", "ResEnc"])
@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_features_per_stage_from_plans(tmp_path, residual, configuration):
    plans = encoder_plans(residual)
    path, net = save_checkpoint(tmp_path / "ck.pth", plans, configuration)
    bundle = load_encoder(path, features="all")
    enc = bundle.encoder
    ndim = 2 if configuration == "2d" else 3
    assert bundle.architecture == ("ResidualEncoderUNet" if residual else "PlainConvUNet")
    assert (bundle.ndim, bundle.configuration, bundle.fold, enc.in_channels) == (ndim, configuration, 0, 1)
    assert bundle.channels == FEATURES
    assert bundle.strides == tuple((s,) * ndim for s in (1, 2, 4))
    assert enc.stage_strides == tuple((s,) * ndim for s in (1, 2, 2))
    assert ("stem" in enc.source_names) is residual and (enc.stem is not None) is residual
    x = torch.randn(2, 1, *(32,) * ndim)
    with torch.no_grad():
        feats = enc(x)
        net.eval()
        skips = net.encoder(x)  # nnU-Net's encoder with the checkpoint's weights: returns every skip
    assert [tuple(f.shape) for f in feats] == [(2, c, *(32 // s,) * ndim) for c, s in zip(FEATURES, (1, 2, 4), strict=True)]
    assert enc.feature_shapes((32,) * ndim) == [tuple(f.shape[1:]) for f in feats]
    assert len(skips) == 3 and all(torch.equal(a, b) for a, b in zip(feats, skips, strict=True))
    assert not enc.training  # returned in eval mode
    # one map, several, negative indices
    with torch.no_grad():
        assert torch.equal(enc.select("deepest")(x), skips[-1]) and enc.out_channels == (16,)
        assert torch.equal(enc.select(1)(x), skips[1])
        got = enc.select([-1, 0])(x)
    assert isinstance(got, list) and [g.shape[1] for g in got] == [16, 4] and enc.out_channels == (16, 4)
    with pytest.raises(ValueError, match=rf"the encoder takes input of shape batchx1x{'x'.join(['size'] * ndim)}"):
        enc(torch.zeros(1, 1, *(32,) * (5 - ndim)))
    with pytest.raises(ValueError, match=r"the encoder takes input .* got \(1, 2, "):
        enc(torch.zeros(1, 2, *(32,) * ndim))


@pytest.mark.parametrize("residual", [False, True], ids=["PlainConvUNet", "ResEnc"])
def test_loaded_tensors_equal_the_checkpoints(tmp_path, residual):
    path, _ = save_checkpoint(tmp_path / "ck.pth", encoder_plans(residual), "3d_fullres")
    weights = torch.load(path, weights_only=False)["network_weights"]
    bundle = load_encoder(path)
    state = bundle.encoder.state_dict()
    # one record per distinct tensor (nnU-Net's blocks reach each conv and norm under two names: all_modules.N)
    assert len({id(v) for v in bundle.encoder.state_dict(keep_vars=True).values()}) == len(bundle.report.tensors) > 0
    for name, value in state.items():
        source = bundle.encoder.source_name(name)
        assert source.startswith("encoder.") and torch.equal(value, weights[source]), name
    report = bundle.report
    assert report.passed and report.applied and report.coverage == 1.0 and report.min_coverage == 1.0
    assert {r.status for r in report.tensors} == {"loaded"}
    groups = [g.name for g in report.groups]
    assert groups == (["encoder.stem"] if residual else []) + ["encoder.stage0", "encoder.stage1", "encoder.stage2"]
    assert all(g.coverage == 1.0 for g in report.groups)
    # the whole network was loaded too (heads by label name), and is reported apart
    assert bundle.network_report.coverage == 1.0 and len(bundle.network_report.tensors) > len(report.tensors)
    # the encoder owns its tensors: changing it leaves a second load untouched
    with torch.no_grad():
        next(bundle.encoder.parameters()).zero_()
    again = load_encoder(path).encoder.state_dict()
    assert torch.equal(again[next(iter(state))], weights[bundle.encoder.source_name(next(iter(state)))])


def _rename_encoder(sd: dict) -> dict:
    return {k.replace("encoder.stages.", "backbone.blocks."): v for k, v in sd.items()}


def test_random_encoder_is_refused_with_the_report(tmp_path):
    path, _ = save_checkpoint(tmp_path / "ck.pth", encoder_plans(), "3d_fullres", state=_rename_encoder)
    with pytest.raises(LoadGuardError, match=r"ck\.pth: only 0\.0% of the encoder's parameters would come from the "
                                             r"checkpoint, below the minimum 100%: the rest would stay randomly "
                                             r"initialised\. Main reasons: missing from the checkpoint \[missing\]") as e:
        load_encoder(path)
    report = e.value.report
    assert report.coverage == 0.0 and not report.passed and e.value.exit_code == 1
    assert {r.status for r in report.tensors} == {"missing"}
    assert any(k.startswith("backbone.blocks.") for k in report.unused_source_keys)
    # a rename rule repairs it: every encoder tensor then comes from the checkpoint
    fixed = load_encoder(path, rename=[r"backbone\.blocks\.(.*)=encoder.stages.\1"])
    assert fixed.report.coverage == 1.0


def test_partly_random_encoder_is_refused_unless_allowed(tmp_path):
    dropped = "encoder.stages.0.0.convs.1.conv.weight"
    path, _ = save_checkpoint(tmp_path / "ck.pth", encoder_plans(), "3d_fullres",  # the tensor under all its names
                              state=lambda sd: {k: v for k, v in sd.items() if v.data_ptr() != sd[dropped].data_ptr()})
    with pytest.raises(LoadGuardError, match=rf"e\.g\. {dropped}"):
        load_encoder(path)
    bundle = load_encoder(path, min_coverage=0.9)
    record = next(r for r in bundle.report.tensors if r.key == dropped)
    assert record.status == "missing" and 0.9 < bundle.report.coverage < 1.0
    assert [g.coverage < 1.0 for g in bundle.report.groups] == [True, False, False]


def test_the_guard_is_the_encoders_not_the_networks(tmp_path):
    """A checkpoint without decoder (an encoder-only pretraining) still gives a complete encoder."""
    path, _ = save_checkpoint(tmp_path / "ck.pth", encoder_plans(), "3d_fullres",
                              state=lambda sd: {k: v for k, v in sd.items() if k.startswith("encoder.")})
    bundle = load_encoder(path)
    assert bundle.report.coverage == 1.0 and bundle.network_report.coverage < 0.7
    assert {r.status for r in bundle.network_report.tensors if r.key.startswith("decoder.stages.")} == {"missing"}


def test_other_sources_need_their_plans(tmp_path):
    plans = encoder_plans()
    _, net = save_checkpoint(tmp_path / "ck.pth", plans, "3d_fullres")
    torch.save(net.state_dict(), tmp_path / "plain.pth")  # a bare state dict: no plans inside
    with pytest.raises(PlansError, match=r"plain\.pth: the checkpoint carries no nnU-Net plans \(init_args\.plans\); "
                                         r"pass plans="):
        load_encoder(tmp_path / "plain.pth")
    with pytest.raises(PlansError, match=r"carries no dataset\.json"):
        load_encoder(tmp_path / "plain.pth", plans=plans)
    with pytest.raises(PlansError, match=r"names no configuration .*pass configuration= \(one of \['2d', '3d_fullres'\]"):
        load_encoder(tmp_path / "plain.pth", plans=plans, dataset_json=make_dataset_json())
    bundle = load_encoder(tmp_path / "plain.pth", "3d_fullres", plans=plans, dataset_json=make_dataset_json())
    assert bundle.report.coverage == 1.0 and bundle.report.format == "torch-zip"
    with pytest.raises(PlansError, match=r"configuration '3d_lowres' not in plans"):
        load_encoder(tmp_path / "ck.pth", "3d_lowres")


def test_the_trainer_that_built_the_network_builds_it_again(tmp_path):
    """nnUNetTrainerBN builds BatchNorm networks: the checkpoint's trainer_name decides, not a default."""
    plans = encoder_plans()
    path, net = save_checkpoint(tmp_path / "ck.pth", plans, "3d_fullres", trainer="nnUNetTrainerBN")
    with torch.no_grad():
        net.encoder.stages[0][0].convs[0].norm.running_mean.fill_(0.5)
    torch.save({**torch.load(path, weights_only=False), "network_weights": net.state_dict()}, path)
    bundle = load_encoder(path)
    assert bundle.trainer == "nnUNetTrainerBN"
    assert {type(m) for m in bundle.encoder.modules() if isinstance(m, nn.modules.batchnorm._NormBase)} == {nn.BatchNorm3d}
    assert torch.equal(bundle.encoder.stages[0][0].convs[0].norm.running_mean, torch.full((4,), 0.5))  # buffers too
    with pytest.raises(PlansError, match=r"trainer 'nnUNetTrainerNoSuchThing': not found"):
        load_encoder(path, trainer="nnUNetTrainerNoSuchThing")


def _named_trainer(path, name: str, plans: dict | None = None) -> None:
    """Rewrite a checkpoint as written by trainer ``name`` (someone's own nnUNetTrainer subclass, not installed
    here), optionally with other plans in its init_args."""
    ckpt = torch.load(path, weights_only=False)
    ckpt["trainer_name"] = name
    if plans is not None:
        ckpt["init_args"]["plans"] = plans
    torch.save(ckpt, path)


NOT_INSTALLED = r"trainer 'nnUNetTrainer_SomeonesOwn' is not installed here; its network is built by nnU-Net's nnUNetTrainer"


@pytest.mark.parametrize("residual", [False, True], ids=["PlainConvUNet", "ResEnc"])
def test_a_trainer_not_installed_here_builds_with_nnunets_trainer_and_warns(tmp_path, residual):
    """The usual downloaded model: trained with the author's own subclass of nnUNetTrainer, which keeps nnU-Net's
    network. The encoder loads into the network nnUNetTrainer builds, verified tensor by tensor, with a warning."""
    plans = encoder_plans(residual)
    path, _ = save_checkpoint(tmp_path / "ck.pth", plans, "3d_fullres")
    _named_trainer(path, "nnUNetTrainer_SomeonesOwn")
    with pytest.warns(MissingTrainerWarning, match=NOT_INSTALLED + r".*activations"):
        bundle = load_encoder(path, features="all")
    assert bundle.trainer == "nnUNetTrainer" and bundle.report.coverage == 1.0
    assert any("not installed here" in n for n in bundle.notes)
    weights = torch.load(path, weights_only=False)["network_weights"]
    state = bundle.encoder.state_dict()
    assert state and all(torch.equal(v, weights[bundle.encoder.source_name(k)]) for k, v in state.items())
    # the trainer named explicitly is never replaced
    with pytest.raises(PlansError, match=r"trainer 'nnUNetTrainer_SomeonesOwn': not found"):
        load_encoder(path, trainer="nnUNetTrainer_SomeonesOwn")


def test_a_trainer_not_installed_here_that_built_another_network_is_refused(tmp_path):
    """A trainer of its own widths (8-16-32 where the plans say 4-8-16): the network nnUNetTrainer builds does not
    match, and the encoder guard refuses it, after the warning."""
    plans = encoder_plans()
    wider = copy.deepcopy(plans)
    wider["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [8, 16, 32]
    path, _ = save_checkpoint(tmp_path / "ck.pth", wider, "3d_fullres")
    _named_trainer(path, "nnUNetTrainer_SomeonesOwn", plans=plans)
    with pytest.warns(MissingTrainerWarning, match=NOT_INSTALLED), \
            pytest.raises(LoadGuardError, match=r"only 0\.0% of the encoder's parameters would come from the checkpoint"):
        load_encoder(path)


def test_a_trainer_not_installed_here_with_other_norms_is_refused(tmp_path):
    """BatchNorm weights fit InstanceNorm's affine parameters in shape; the running statistics the checkpoint's
    encoder has and nnUNetTrainer's network lacks give the other network away."""
    plans = encoder_plans()
    path, _ = save_checkpoint(tmp_path / "ck.pth", plans, "3d_fullres", trainer="nnUNetTrainerBN")
    _named_trainer(path, "nnUNetTrainer_SomeonesOwn")
    with pytest.warns(MissingTrainerWarning), pytest.raises(
            LoadGuardError, match=r"the checkpoint's encoder has \d+ tensor\(s\) the network nnUNetTrainer builds lacks "
                                  r"\(e\.g\. encoder\.stages\.0\.0\.convs\.0\.norm\.running_mean"):
        load_encoder(path)


def test_a_model_folder_of_a_trainer_not_installed_here(tmp_path):
    import json

    plans = encoder_plans()
    folder = tmp_path / "Dataset990_Unit" / "nnUNetTrainer_SomeonesOwn__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(make_dataset_json()))
    path, _ = save_checkpoint(folder / "fold_0" / "checkpoint_final.pth", plans, "3d_fullres")
    _named_trainer(path, "nnUNetTrainer_SomeonesOwn")
    with pytest.warns(MissingTrainerWarning, match=NOT_INSTALLED):
        bundle = load_encoder(folder, fold=0)
    assert bundle.trainer == "nnUNetTrainer" and bundle.report.coverage == 1.0


def test_feature_requests_and_layouts():
    assert resolve_features("deepest", 4) == ((3,), True)
    assert resolve_features("all", 3) == ((0, 1, 2), False)
    assert resolve_features(-2, 4) == ((2,), True)
    assert resolve_features([0, -1], 4) == ((0, 3), False)
    for bad, match in [("last", "expected 'deepest', 'all'"), ([], "expected"), ([5], "stage 5 does not exist"),
                       ([1, -3], "asked for twice"), ([True], "expected")]:
        with pytest.raises(ValueError, match=match):
            resolve_features(bad, 4)
    with pytest.raises(ArchitectureError, match=r"Sequential \(architecture 'generic'\): no encoder layout declared"):
        encoder_layout(nn.Sequential(nn.Conv3d(1, 2, 3)))
    with pytest.raises(ValueError, match="2 stages, 1 channel counts and 2 strides"):
        PretrainedEncoder([nn.Identity(), nn.Identity()], [1], [[1], [2]])
    with pytest.raises(ArchitectureError, match="one entry per stage"):
        EncoderLayout(stages=("a",), channels=(1, 2), strides=((1,),))


def test_layout_follows_the_declarations_and_not_the_names(unet_factory):
    net = unet_factory(residual=True)
    layout = architecture_for(net).encoder(net)
    assert layout == EncoderLayout(stages=("encoder.stages.0", "encoder.stages.1", "encoder.stages.2"),
                                   channels=(4, 8, 16), strides=((1, 1, 1), (2, 2, 2), (2, 2, 2)), stem="encoder.stem")
    assert architecture_for(torch.compile(net)).encoder(net) == layout

    class OwnForward(type(net.encoder)):  # an encoder that computes something else: no chain to extract
        def forward(self, x):
            return super().forward(x * 2)

    net.encoder.__class__ = OwnForward
    assert architecture_for(net).encoder(net) is None
    with pytest.raises(ArchitectureError, match="no encoder layout declared"):
        PretrainedEncoder.from_network(net)


def test_build_encoder_is_a_random_baseline():
    plans = encoder_plans()
    torch.manual_seed(0)
    a = build_encoder(plans, "3d_fullres", make_dataset_json(), features="all")
    torch.manual_seed(0)
    b = build_encoder(plans, "3d_fullres", make_dataset_json())
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert a.features == (0, 1, 2) and b.features == (2,) and a.training


def test_model_folder_and_fold(tmp_path):
    """nnU-Net's Trainer__Plans__Configuration folder: its plans.json / dataset.json, the fold's checkpoint."""
    import json
    import shutil

    from nnunet_transfer.errors import CheckpointError, TransferError

    plans = encoder_plans(residual=True)
    folder = tmp_path / "Dataset990_Unit" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(make_dataset_json()))
    path, _ = save_checkpoint(folder / "fold_0" / "checkpoint_final.pth", plans, "3d_fullres")
    bundle = load_encoder(folder, fold=0, features="all")
    assert bundle.source == path and bundle.fold == 0 and bundle.configuration == "3d_fullres"
    assert bundle.plans == plans and bundle.architecture == "ResidualEncoderUNet" and bundle.report.coverage == 1.0
    from_file = load_encoder(path, features="all").encoder.state_dict()
    assert all(torch.equal(v, from_file[k]) for k, v in bundle.encoder.state_dict().items())
    assert load_encoder(folder, "3d_fullres", "0").fold == 0

    shutil.copytree(folder / "fold_0", folder / "fold_1")  # a copied checkpoint: fold 0's weights under fold_1
    with pytest.raises(CheckpointError, match=r"fold_1/checkpoint_final\.pth: holds the weights of fold 0 "
                                              r"\(init_args\.fold\), not of fold 1"):
        load_encoder(folder, fold=1)
    with pytest.raises(PlansError, match=r"a model folder; name the fold \(fold=\.\.\.; folds here: 0, 1\)"):
        load_encoder(folder)
    with pytest.raises(PlansError, match=r"the model folder of configuration '3d_fullres', not '2d'"):
        load_encoder(folder, "2d", 0)
    with pytest.raises(TransferError, match=r"fold 3: .*fold_3 not found \(folds in .*: 0, 1\)") as e:
        load_encoder(folder, fold=3)
    assert e.value.exit_code == 2
    with pytest.raises(TransferError, match=r"checkpoint_best\.pth: not found \(checkpoints in fold_0: "
                                            r"checkpoint_final\.pth"):
        load_encoder(folder, fold=0, checkpoint_name="checkpoint_best.pth")
    with pytest.raises(TransferError, match="not an nnU-Net model folder"):
        load_encoder(tmp_path, fold=0)


def test_declared_parameter_groups_are_checked():
    from nnunet_transfer.core.schedules.groups import derive_groups

    class Declares(nn.Module):
        def __init__(self, patterns):
            super().__init__()
            self.a, self.b = nn.Linear(1, 1), nn.Linear(1, 1)
            self.parameter_group_patterns = patterns

    assert [g.name for g in derive_groups(Declares({"first": [r"a\..+"], "second": [r"b\..+"]}))] == ["first", "second"]
    with pytest.raises(ArchitectureError, match=r"Declares\.parameter_group_patterns must be a mapping \{group: "):
        derive_groups(Declares({"first": r"a\..+"}))
    with pytest.raises(ArchitectureError, match="differ in their number of axes"):
        EncoderLayout(stages=("a", "b"), channels=(1, 2), strides=((1, 1), (2, 2, 2)))
