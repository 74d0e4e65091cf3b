"""The classifier on a pretrained encoder: its parameter groups, the recipe's freezing, progressive unfreezing and
per-group rates, frozen tensors bit-identical after optimizer steps, and a loss that goes down."""

from __future__ import annotations

import pytest
import torch
from test_encoders import encoder_plans, save_checkpoint
from torch import nn

from nnunet_transfer.core.architectures import architecture_for
from nnunet_transfer.core.schedules.groups import derive_groups
from nnunet_transfer.core.schedules.recipes import Recipe, load_recipe
from nnunet_transfer.encoders import EncoderClassifier, FineTuning, load_encoder
from nnunet_transfer.errors import RecipeError

BN = "torch.nn.modules.batchnorm.BatchNorm3d"


def bundle(tmp_path, residual: bool = False, norm_op: str | None = None, configuration: str = "3d_fullres"):
    plans = encoder_plans(residual, **({"norm_op": norm_op} if norm_op else {}))
    path, _ = save_checkpoint(tmp_path / "ck.pth", plans, configuration)
    return load_encoder(path, features="all")


def stages(residual: bool) -> list[str]:
    return (["encoder.stem"] if residual else []) + ["encoder.stage0", "encoder.stage1", "encoder.stage2"]


@pytest.mark.parametrize("residual", [False, True], ids=["PlainConvUNet", "ResEnc"])
@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_groups_and_output(tmp_path, residual, configuration):
    clf = EncoderClassifier(bundle(tmp_path, residual, configuration=configuration), 3, pooling="avgmax", dropout=0.2)
    groups = derive_groups(clf)
    assert [g.name for g in groups] == [*stages(residual), "heads"]
    assert architecture_for(clf).name == "generic"  # the groups come from the classifier's own declaration
    assert sum(len(g.params) for g in groups) == len(list(clf.parameters()))
    assert [p for g in groups if g.name == "heads" for p in g.params] == [clf.head.weight, clf.head.bias]
    assert clf.stages == (0, 1, 2) and clf.num_features == 2 * (4 + 8 + 16) == clf.head.in_features
    ndim = 2 if configuration == "2d" else 3
    assert clf(torch.randn(4, 1, *(32,) * ndim)).shape == (4, 3)
    deepest = EncoderClassifier(clf.encoder, 2, stages="deepest", pooling="max", norm=False)
    assert deepest.num_features == 16 and isinstance(deepest.norm, nn.Identity)


def test_only_the_pooled_stages_run(tmp_path):
    clf = EncoderClassifier(bundle(tmp_path), 2, stages=[0])
    clf(torch.randn(2, 1, 32, 32, 32)).sum().backward()
    grads = {n: p.grad is not None for n, p in clf.named_parameters()}
    assert all(grads[n] for n in grads if n.startswith(("encoder.stages.0.", "head.")))
    assert not any(grads[n] for n in grads if n.startswith(("encoder.stages.1.", "encoder.stages.2.")))


def test_bad_arguments_name_themselves(tmp_path):
    b = bundle(tmp_path)
    for kwargs, match in [({"pooling": "mean"}, "pooling='mean'"), ({"dropout": 1.0}, r"dropout=1\.0"),
                          ({"stages": [7]}, "stage 7 does not exist")]:
        with pytest.raises(ValueError, match=match):
            EncoderClassifier(b, 2, **kwargs)
    with pytest.raises(TypeError, match="PretrainedEncoder or an EncoderBundle, not Conv3d"):
        EncoderClassifier(nn.Conv3d(1, 1, 1), 2)


def test_frozen_encoder_is_bit_identical_after_optimizer_steps(tmp_path):
    """BatchNorm plans: frozen means parameters and running statistics; AdamW's weight decay must not touch them."""
    clf = EncoderClassifier(bundle(tmp_path, norm_op=BN), 2)
    before = {k: v.clone() for k, v in clf.encoder.state_dict().items()}
    head_before = clf.head.weight.detach().clone()
    ft = FineTuning(clf, "classifier", num_epochs=20)  # the recipe's 50 epochs scaled: encoder from epoch 4
    assert ft.start_epoch(0) == ["heads"]
    assert not any(p.requires_grad for p in clf.encoder.parameters())
    norms = [m for m in clf.encoder.modules() if isinstance(m, nn.BatchNorm3d)]
    assert norms and not any(m.training for m in norms) and clf.training and clf.norm.training
    x, y = torch.randn(8, 1, 32, 32, 32), torch.tensor([0, 1] * 4)
    for _ in range(3):
        loss = nn.functional.cross_entropy(clf(x), y)
        ft.optimizer.zero_grad()
        loss.backward()
        ft.optimizer.step()
    after = clf.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k], after[k])]
    assert not torch.equal(head_before, clf.head.weight)
    ft.train()  # after an evaluation: frozen norms go back to eval
    assert not any(m.training for m in norms)
    # the second warm start: the encoder trains (and its norms with it)
    assert ft.start_epoch(4) == [*stages(False), "heads"]
    assert all(m.training for m in norms)
    loss = nn.functional.cross_entropy(clf(x), y)
    ft.optimizer.zero_grad()
    loss.backward()
    ft.optimizer.step()
    moved = clf.encoder.state_dict()
    assert not torch.equal(before["stages.0.0.convs.0.conv.weight"], moved["stages.0.0.convs.0.conv.weight"])
    assert not torch.equal(before["stages.0.0.convs.0.norm.running_mean"], moved["stages.0.0.convs.0.norm.running_mean"])


def test_loss_decreases(tmp_path):
    """Does the volume hold a bright cube? Noise alone (0) or noise and a cube at a random place (1)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, 16, 16, 16, generator=gen)
    y = torch.arange(32) % 2
    for k in range(1, 32, 2):
        z, r, c = torch.randint(2, 9, (3,), generator=gen).tolist()
        x[k, 0, z:z + 5, r:r + 5, c:c + 5] += 2.0
    torch.manual_seed(0)
    clf = EncoderClassifier(bundle(tmp_path), 2)
    ft = FineTuning(clf, "classifier", num_epochs=4, base_lr=1e-2)
    losses = []
    for epoch in range(4):
        ft.start_epoch(epoch)
        for _ in range(4):
            idx = torch.randint(0, 32, (8,), generator=gen)
            loss = nn.functional.cross_entropy(clf(x[idx]), y[idx])
            ft.optimizer.zero_grad()
            loss.backward()
            ft.optimizer.step()
            losses.append(loss.item())
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4, losses


def test_rates_per_group_follow_the_classifier_recipe(tmp_path):
    clf = EncoderClassifier(bundle(tmp_path, residual=True), 2)
    ft = FineTuning(clf, "classifier")
    recipe = load_recipe("classifier")
    assert (ft.num_epochs, recipe.initial_lr, recipe.optimizer, recipe.warmup_epochs) == (50, 1e-3, "adamw", 10)
    assert isinstance(ft.optimizer, torch.optim.AdamW)
    assert [pg["name"] for pg in ft.optimizer.param_groups] == [*stages(True), "heads"]
    assert {pg["name"]: pg["weight_decay"] for pg in ft.optimizer.param_groups} == {
        **dict.fromkeys(stages(True), 1e-4), "heads": 0.0}
    assert ft.schedule.unfreeze_epoch == {**dict.fromkeys(stages(True), 10), "heads": 0}

    def poly(e: int) -> float:
        return (1 - e / 50) ** 0.9

    expected = {
        0: (0.0, 1e-3),
        9: (0.0, 1e-3 * poly(9)),
        10: (1e-4 * poly(10) * 1 / 10, 1e-3 * poly(10)),  # warmup: first tenth
        14: (1e-4 * poly(14) * 5 / 10, 1e-3 * poly(14)),
        19: (1e-4 * poly(19), 1e-3 * poly(19)),  # warmed up
        49: (1e-4 * poly(49), 1e-3 * poly(49)),
    }
    for epoch, (enc, head) in expected.items():
        ft.start_epoch(epoch)
        rates = ft.rates()
        assert rates["heads"] == pytest.approx(head) and all(rates[g] == pytest.approx(enc) for g in stages(True))
        assert all(p.requires_grad == (epoch >= 10) for p in clf.encoder.parameters())
    # another budget: the phases scale with it
    short = FineTuning(clf, "classifier", num_epochs=10)
    assert short.schedule.unfreeze_epoch["encoder.stage0"] == 2 and short.schedule.warmup_epochs == 2
    assert short.recipe.name == "classifier_10epochs" and len(short.table()) == 10


def test_progressive_unfreezing_deepest_first(tmp_path):
    clf = EncoderClassifier(bundle(tmp_path, residual=True), 2)
    recipe = Recipe(name="progressive", num_epochs=12, initial_lr=0.01, optimizer="sgd",
                    phases=[{"start_epoch": 0, "unfreeze": ["heads"]}],
                    progressive={"groups": ["encoder.*"], "start_epoch": 3, "every": 2}, warmup_epochs=2,
                    lr_multipliers={"encoder.*": 0.5})
    ft = FineTuning(clf, recipe)
    assert ft.schedule.unfreeze_epoch == {"encoder.stem": 9, "encoder.stage0": 7, "encoder.stage1": 5,
                                          "encoder.stage2": 3, "heads": 0}
    assert ft.start_epoch(5) == ["encoder.stage1", "encoder.stage2", "heads"]
    trainable = {n.split(".")[2] for n, p in clf.named_parameters() if p.requires_grad and n.startswith("encoder.stages")}
    assert trainable == {"1", "2"} and not any(p.requires_grad for p in clf.encoder.stem.parameters())
    assert ft.rates()["encoder.stage1"] == pytest.approx(0.01 * 0.5 * (1 - 5 / 12) ** 0.9 * 1 / 2)
    assert isinstance(ft.optimizer, torch.optim.SGD)


def test_recipe_errors(tmp_path):
    clf = EncoderClassifier(bundle(tmp_path), 2)
    with pytest.raises(RecipeError, match="recipe nothing: sets no num_epochs; pass num_epochs="):
        FineTuning(clf, Recipe(name="nothing"))
    with pytest.raises(RecipeError, match=r"phases\[0\]\.unfreeze: 'decoder\.\*' matches no parameter group"):
        FineTuning(clf, "default", num_epochs=10)
    with pytest.raises(ValueError, match="epoch 10: the schedule has epochs 0 to 9"):
        FineTuning(clf, "classifier", num_epochs=10).start_epoch(10)


def test_a_compiled_classifier_gets_the_same_groups(tmp_path):
    clf = EncoderClassifier(bundle(tmp_path), 2)
    ft = FineTuning(torch.compile(clf), "classifier", num_epochs=10)
    assert [g.name for g in ft.groups] == [*stages(False), "heads"]
    assert ft.groups[-1].params == [clf.head.weight, clf.head.bias]
