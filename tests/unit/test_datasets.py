"""The one dataset locator: names and IDs over explicit nnU-Net roots, the environment read at call time."""

from __future__ import annotations

import json

import pytest

from nnunet_transfer.errors import PlansError
from nnunet_transfer.nnunet.datasets import (
    DatasetLocation,
    NnUNetRoots,
    dataset_name,
    find_target_dataset,
    locate_dataset,
)


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """Three roots holding Dataset042_Raw (raw only), Dataset043_Pre (preprocessed) and Dataset044_Res (results);
    the nnUNet_* variables unset."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(var, raising=False)
    out = {k: tmp_path / k for k in ("raw", "preprocessed", "results")}
    (out["raw"] / "Dataset042_Raw").mkdir(parents=True)
    (out["preprocessed"] / "Dataset043_Pre").mkdir(parents=True)
    (out["results"] / "Dataset044_Res").mkdir(parents=True)
    return out


def test_ids_resolve_in_each_explicit_root(roots):
    assert dataset_name(42, **roots) == "Dataset042_Raw"
    assert dataset_name("43", **roots) == "Dataset043_Pre"
    assert dataset_name(44, **roots) == "Dataset044_Res"
    assert dataset_name(45, **roots) is None
    assert dataset_name("Dataset999_Named", **roots) == "Dataset999_Named"  # a full name is taken as it is
    assert dataset_name("not-a-dataset", **roots) is None


def test_location_gives_the_three_folders(roots):
    loc = locate_dataset(42, **roots)
    assert loc == DatasetLocation("Dataset042_Raw", NnUNetRoots(roots["raw"], roots["preprocessed"], roots["results"]))
    assert loc.id == 42
    assert loc.raw == roots["raw"] / "Dataset042_Raw"
    assert loc.preprocessed == roots["preprocessed"] / "Dataset042_Raw"
    assert loc.results == roots["results"] / "Dataset042_Raw"  # where its results would go


def test_environment_is_read_at_call_time_not_at_import(roots, monkeypatch):
    assert dataset_name(42) is None
    monkeypatch.setenv("nnUNet_raw", str(roots["raw"]))
    assert dataset_name(42) == "Dataset042_Raw"
    assert locate_dataset(42).raw == roots["raw"] / "Dataset042_Raw"
    # an explicit root wins over the environment
    assert dataset_name(42, raw=roots["preprocessed"]) is None


def test_missing_root_names_its_variable(roots):
    loc = locate_dataset(42, raw=roots["raw"])
    with pytest.raises(PlansError, match=r"nnUNet_preprocessed is not set: .* pass preprocessed="):
        _ = loc.preprocessed
    with pytest.raises(PlansError, match="nnUNet_preprocessed is not set"):
        find_target_dataset(42, raw=roots["raw"])


def test_unknown_and_ambiguous_ids_are_clear_errors(roots):
    with pytest.raises(PlansError, match=r"dataset '45' not found: .*nnUNet_raw=.*raw, nnUNet_preprocessed="):
        locate_dataset(45, **roots)
    (roots["preprocessed"] / "Dataset042_Other").mkdir()
    with pytest.raises(PlansError, match=r"dataset ID 42 is ambiguous: \['Dataset042_Other', 'Dataset042_Raw'\]"):
        dataset_name(42, **roots)


def test_find_target_dataset_reads_plans_from_the_given_root(roots):
    folder = roots["preprocessed"] / "Dataset043_Pre"
    (folder / "nnUNetPlans.json").write_text(json.dumps({"plans_name": "nnUNetPlans", "configurations": {}}))
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
    target = find_target_dataset(43, preprocessed=roots["preprocessed"])
    assert (target.name, target.folder, target.plans["plans_name"]) == ("Dataset043_Pre", folder, "nnUNetPlans")
    assert target.dataset_json == {"labels": {"background": 0}}
    with pytest.raises(PlansError, match=r"Other\.json: plans not found \(plans in .*: \['nnUNetPlans'\]\)"):
        find_target_dataset("Dataset043_Pre", "Other", preprocessed=roots["preprocessed"])
