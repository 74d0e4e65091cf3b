"""Key normalisation: wrapper prefixes, prefix alignment, anchored user rules."""

import pytest

from nnunet_transfer.core.loading.keys import normalize_keys, parse_rename_rule, strip_wrappers


@pytest.mark.parametrize(
    "key",
    [
        "encoder.stages.0.w",
        "module.encoder.stages.0.w",
        "_orig_mod.encoder.stages.0.w",
        "module._orig_mod.encoder.stages.0.w",
        "_orig_mod.module.encoder.stages.0.w",
        "module.module._orig_mod.encoder.stages.0.w",
        "encoder._orig_mod.stages.0.w",
    ],
)
def test_wrappers_stripped_in_any_order_and_nesting(key):
    assert strip_wrappers(key) == "encoder.stages.0.w"


def test_module_inside_a_name_is_not_a_wrapper():
    assert strip_wrappers("encoder.module.w") == "encoder.module.w"
    assert strip_wrappers("my_orig_mod.w") == "my_orig_mod.w"


TARGET = ["encoder.stages.0.w", "encoder.stages.1.w", "decoder.stages.0.w", "decoder.seg_layers.0.w"]


def test_container_prefix_removed_when_it_makes_keys_match():
    m = normalize_keys(["model.encoder.stages.0.w", "model.encoder.stages.1.w", "model.decoder.stages.0.w"], TARGET)
    assert m.prefix_removed == "model." and m.prefix_added == ""
    assert set(m.names.values()) == {"encoder.stages.0.w", "encoder.stages.1.w", "decoder.stages.0.w"}


def test_backbone_prefix_replaced_by_encoder():
    m = normalize_keys(["backbone.stages.0.w", "backbone.stages.1.w", "head.fc.w"], TARGET)
    assert (m.prefix_removed, m.prefix_added) == ("backbone.", "encoder.")
    assert m.names["backbone.stages.1.w"] == "encoder.stages.1.w"
    assert m.names["head.fc.w"] == "head.fc.w"


def test_encoder_only_state_dict_gets_encoder_prefix():
    m = normalize_keys(["stages.0.w", "stages.1.w"], TARGET)
    assert m.prefix_added == "encoder."


def test_no_prefix_change_when_keys_already_match():
    m = normalize_keys(TARGET, TARGET)
    assert m.names == {k: k for k in TARGET}
    assert m.describe() == ""


def test_user_rules_match_the_whole_key():
    rules = [parse_rename_rule(r"layer\.bias=decoder.stages.0.w")]
    m = normalize_keys(["layer.bias", "class_layer.bias", "layer.bias2"], rename=rules)
    assert m.names == {"layer.bias": "decoder.stages.0.w", "class_layer.bias": "class_layer.bias",
                       "layer.bias2": "layer.bias2"}


def test_user_rules_with_groups_then_wrappers():
    m = normalize_keys(["module.net.blocks.3.w"], TARGET, [parse_rename_rule(r"module\.net\.blocks\.(\d+)\.w=encoder.stages.\1.w")])
    assert m.names["module.net.blocks.3.w"] == "encoder.stages.3.w"


@pytest.mark.parametrize("bad", ["no-equals-sign", "([unclosed=x"])
def test_bad_rename_rules_are_rejected(bad):
    with pytest.raises(ValueError, match="rename rule"):
        parse_rename_rule(bad)
