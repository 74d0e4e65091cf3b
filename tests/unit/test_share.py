"""``nnunet-transfer share``: a fine-tuned model folder copied as a plain nnU-Net model (checked in-process here; the
stock nnUNetv2_predict on a trained, shared model is in tests/e2e/test_regions_share.py)."""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
import warnings
import zipfile

import torch
from helpers import make_dataset_json, make_plans

from nnunet_transfer.cli import main
from nnunet_transfer.export.share import SHARE_RECORD, share_models, stock_trainer_for
from nnunet_transfer.nnunet.networks import build_network

OURS = "nnUNetTrainerAdaptiveFT"
RECIPE = {"name": "tiny", "num_epochs": 2}


def _model_folder(root, trainer=OURS, folds=("0", "1"), dataset="Dataset990_Unit", plans=None):
    """A results model folder as our trainer leaves it: recipe in plans.json and init_args, reports beside."""
    plans = {**(plans or make_plans(dataset)), "nnunet_transfer_recipe": RECIPE}
    dj = make_dataset_json()
    folder = root / dataset / f"{trainer}__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dj))
    (folder / "dataset_fingerprint.json").write_text("{}")
    for f in folds:
        fold = folder / f"fold_{f}"
        (fold / "validation").mkdir(parents=True)
        torch.manual_seed(int(f) if f.isdigit() else 9)
        net = build_network(plans, "3d_fullres", dj, trainer=trainer)
        torch.save({"network_weights": net.state_dict(), "optimizer_state": {"state": {}, "param_groups": []},
                    "current_epoch": 2, "trainer_name": trainer, "inference_allowed_mirroring_axes": (0, 1, 2),
                    "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": int(f), "dataset_json": dj,
                                  "device": torch.device("cpu")}}, fold / "checkpoint_final.pth")
        (fold / "pretrained_load_report.json").write_text('{"coverage": 1.0}')
        (fold / "lr_table.json").write_text("[]")
        (fold / "progress.png").write_bytes(b"png")
        (fold / "validation" / "summary.json").write_text("{}")
        (fold / "validation" / "case_000.npz").write_bytes(b"npz")
    (folder / "crossval_results_folds_0_1").mkdir()
    (folder / "crossval_results_folds_0_1" / "summary.json").write_text("{}")
    return folder


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_our_trainers_share_as_nnunets_own():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.training.nnUNetTrainer.variants.network_architecture.nnUNetTrainerBN import nnUNetTrainerBN

    assert stock_trainer_for(OURS) is nnUNetTrainer
    assert stock_trainer_for("nnUNetTrainerAdaptiveFT_DecoderOnly") is nnUNetTrainer
    assert stock_trainer_for("nnUNetTrainerBN") is nnUNetTrainerBN  # stock, with its own architecture: itself


def test_shared_folder_is_stock_and_the_original_unchanged(tmp_path):
    folder = _model_folder(tmp_path / "results")
    before = _digest(folder)
    result = share_models([folder], tmp_path / "out")
    assert _digest(folder) == before
    out = tmp_path / "out" / "Dataset990_Unit" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert [m.destination for m in result.models] == ["Dataset990_Unit/nnUNetTrainer__nnUNetPlans__3d_fullres"]
    plans = json.loads((out / "plans.json").read_text())
    assert "nnunet_transfer_recipe" not in plans
    assert plans == make_plans("Dataset990_Unit")
    for f in ("0", "1"):
        src = torch.load(folder / f"fold_{f}" / "checkpoint_final.pth", weights_only=False)
        new = torch.load(out / f"fold_{f}" / "checkpoint_final.pth", weights_only=False)
        assert new["trainer_name"] == "nnUNetTrainer" and src["trainer_name"] == OURS
        assert set(new["init_args"]) == {"plans", "configuration", "fold", "dataset_json", "device"}
        assert "nnunet_transfer_recipe" not in new["init_args"]["plans"]
        assert new["network_weights"].keys() == src["network_weights"].keys()
        assert all(torch.equal(new["network_weights"][k], v) for k, v in src["network_weights"].items())
        assert new["current_epoch"] == 2 and new["inference_allowed_mirroring_axes"] == (0, 1, 2)
        for doc in ("pretrained_load_report.json", "lr_table.json", "progress.png", "validation/case_000.npz"):
            assert (out / f"fold_{f}" / doc).read_bytes() == (folder / f"fold_{f}" / doc).read_bytes()
    record = json.loads((out / SHARE_RECORD).read_text())
    assert record["trainer"] == OURS and record["stock_trainer"] == "nnUNetTrainer"
    assert record["removed_plans_keys"] == {"nnunet_transfer_recipe": RECIPE}
    assert record["checkpoints"]["fold_0/checkpoint_final.pth"]["source_sha256"] == before[
        "fold_0/checkpoint_final.pth"]
    assert not list(tmp_path.glob(".nnunet_transfer_share_*"))  # no staging left behind


def test_nnunets_predictor_loads_the_shared_folder_with_the_stock_trainer(tmp_path, monkeypatch):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    folder = _model_folder(tmp_path / "results")
    share_models([folder], tmp_path / "out", folds=["1"])
    out = tmp_path / "out" / "Dataset990_Unit" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert sorted(p.name for p in out.glob("fold_*")) == ["fold_1"]
    assert not (out / "crossval_results_folds_0_1").exists()  # fold 0 is not shared
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)  # our trainers cannot be found
    predictor = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor.initialize_from_trained_model_folder(str(out), use_folds=(1,))
    assert predictor.trainer_name == "nnUNetTrainer"
    src = torch.load(folder / "fold_1" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    assert all(torch.equal(predictor.network.state_dict()[k], v) for k, v in src.items())


def test_zip_has_the_layout_of_nnunets_export(tmp_path):
    folder = _model_folder(tmp_path / "results")
    share_models([folder], tmp_path / "model.zip", zip=True)
    names = set(zipfile.ZipFile(tmp_path / "model.zip").namelist())
    base = "Dataset990_Unit/nnUNetTrainer__nnUNetPlans__3d_fullres/"
    assert {base + n for n in ("plans.json", "dataset.json", "dataset_fingerprint.json", SHARE_RECORD,
                               "fold_0/checkpoint_final.pth", "fold_0/progress.png", "fold_0/validation/summary.json",
                               "fold_1/checkpoint_final.pth", "crossval_results_folds_0_1/summary.json",
                               "fold_0/pretrained_load_report.json")} <= names
    assert not any(n.endswith(".npz") for n in names)  # validation predictions stay out, as nnU-Net's export does
    assert all(n.startswith(base) for n in names)


def _run(capsys, *args):
    code = main(["share", *map(str, args)])
    err = capsys.readouterr().err
    return code, err


def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch):
    folder = _model_folder(tmp_path / "results", folds=("0",))
    out = tmp_path / "out"
    code, err = _run(capsys, tmp_path / "results", "-o", out)  # the results root: holds datasets, not models
    assert code == 2 and err.count("\n") == 1 and "not an nnU-Net model folder" in err
    code, err = _run(capsys, folder, "-o", out, "-f", "3")
    assert code == 2 and err.count("\n") == 1 and "fold 3" in err and "folds in" in err
    code, err = _run(capsys, folder, "-o", out, "-c", "2d")
    assert code == 2 and "configuration 2d" in err
    # a trainer with its own network
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "own_net_trainer.py").write_text(textwrap.dedent("""
        import torch
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        class nnUNetTrainer_ShareTestOwnNet(nnUNetTrainer):
            @staticmethod
            def build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                           num_output_channels, enable_deep_supervision=True):
                return torch.nn.Conv3d(num_input_channels, num_output_channels, 1)
    """))
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([str(ext), os.environ.get("nnUNet_extTrainer", "")]))
    own = _model_folder(tmp_path / "results2", trainer="nnUNetTrainer_ShareTestOwnNet", folds=("0",))
    code, err = _run(capsys, own, "-o", out)
    assert code == 2 and err.count("\n") == 1
    assert "trainer nnUNetTrainer_ShareTestOwnNet: builds its own network" in err and "not nnU-Net's" in err
    assert not out.exists() and not list(tmp_path.glob(".nnunet_transfer_share_*"))
    # ours fine-tuned a Primus (nnssl): nnU-Net's nnUNetTrainer cannot build it from the plans, and nnU-Net's Primus
    # trainers hard-code their network
    from nnssl_data import PRIMUS_KEYS, adaptation_plan, primus_kwargs

    from nnunet_transfer.core.nnssl import AdaptationPlan
    from nnunet_transfer.nnunet.plans.nnssl import nnunet_plans

    primus_plans = nnunet_plans(AdaptationPlan.model_validate(adaptation_plan("Primus", PRIMUS_KEYS, primus_kwargs())),
                                dataset_name="Dataset990_Unit")
    primus = _model_folder(tmp_path / "results3", folds=("0",), plans=primus_plans)
    code, err = _run(capsys, primus, "-o", out)
    assert code == 2 and err.count("\n") == 1, err
    assert "nnUNetTrainer cannot build this model's network (dynamic_network_architectures" in err and "Primus" in err
    assert "not shared" in err and not out.exists()
    # the Primus that flattens its tokens as nnssl's EvaMAE did (this package's class): refused the same way
    hwd_plans = nnunet_plans(AdaptationPlan.model_validate(adaptation_plan("Primus", PRIMUS_KEYS, primus_kwargs())),
                             dataset_name="Dataset990_Unit", token_order="hwd")
    hwd = _model_folder(tmp_path / "results4", folds=("0",), plans=hwd_plans)
    code, err = _run(capsys, hwd, "-o", out)
    assert code == 2 and err.count("\n") == 1, err
    assert "nnUNetTrainer cannot build this model's network (nnunet_transfer.core.primus.PrimusHWD)" in err
    assert "plain nnU-Net could not load it, not shared" in err and not out.exists()
    # an existing copy is never replaced without --overwrite
    assert _run(capsys, folder, "-o", out)[0] == 0
    shared = out / "Dataset990_Unit" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (shared / "marker").write_text("x")
    code, err = _run(capsys, folder, "-o", out)
    assert code == 2 and "exists; pass --overwrite" in err and (shared / "marker").is_file()
    assert _run(capsys, folder, "-o", out, "--overwrite")[0] == 0 and not (shared / "marker").exists()
    code, err = _run(capsys, folder, "-o", folder / "sub")
    assert code == 2 and "is never changed" in err and not (folder / "sub").exists()


def test_a_trainer_not_installed_here_shares_with_trainer(tmp_path, capsys):
    """A model trained with someone's own nnUNetTrainer subclass (not installed here): refused by default naming
    --trainer; with -tr nnUNetTrainer the stock network must load every fold strictly, and the copy is shared."""
    import shutil

    built = _model_folder(tmp_path / "built", trainer="nnUNetTrainer")
    folder = tmp_path / "results" / "Dataset990_Unit" / "nnUNetTrainer_SomeonesOwn__nnUNetPlans__3d_fullres"
    shutil.copytree(built, folder)
    for ckpt in folder.glob("fold_*/checkpoint_final.pth"):
        torch.save({**torch.load(ckpt, weights_only=False), "trainer_name": "nnUNetTrainer_SomeonesOwn"}, ckpt)
    out = tmp_path / "out"
    assert main(["share", str(folder), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "trainer 'nnUNetTrainer_SomeonesOwn': not found" in err and "give --trainer NAME" in err
    assert not out.exists()
    assert main(["share", str(folder), "-o", str(out), "--trainer", "nnUNetTrainer"]) == 0
    shared = out / "Dataset990_Unit" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    record = json.loads((shared / SHARE_RECORD).read_text())
    assert record["trainer"] == "nnUNetTrainer_SomeonesOwn" and record["stock_trainer"] == "nnUNetTrainer"
    new = torch.load(shared / "fold_0" / "checkpoint_final.pth", weights_only=False)
    assert new["trainer_name"] == "nnUNetTrainer"
