"""The campaign report reads nnU-Net's real validation summaries (made here by nnU-Net's own compute_metrics_on_folder
from tiny synthetic segmentations) and writes report.csv (exact numbers), report.md (statistics, gain, not done)
and report.png, only inside its output folder."""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from nnunet_transfer.campaigns.report import MEAN_LABEL, ReportError, write_report

SHAPE = (16, 16, 16)
LABELS_902 = {"background": 0, "edema": 1, "lesion": 2}
# a region dataset (lists and a scalar, as nnU-Net allows) with a label that no case has: its Dice is NaN
LABELS_903 = {"background": 0, "whole": [1, 2], "core": [2], "edge": 1, "rare": 3}
REGIONS_903 = [(1, 2), (2,), 1, 3]


@dataclass(frozen=True)
class Task:
    """The attributes the report reads of a campaign's TrainTask."""

    dataset: str
    configuration: str
    arm: str
    fold: int
    fold_dir: Path


def _reference(case: int) -> np.ndarray:
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[2:8 + case, 2:9, 2:9] = 1
    seg[9:14, 8:14, 9:15 - case] = 2
    return seg


def _write_cases(folder: Path, segs: list[np.ndarray]) -> None:
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    for i, seg in enumerate(segs):
        sitk.WriteImage(sitk.GetImageFromArray(seg), str(folder / f"case_{i:03d}.nii.gz"))


@pytest.fixture(scope="module")
def summaries(tmp_path_factory) -> dict[str, Path]:
    """nnU-Net's own summary.json files: A, B, C (labels 1, 2; worse and worse predictions) and R (regions and a
    label absent from every case)."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    root = tmp_path_factory.mktemp("summaries")
    refs = [_reference(c) for c in range(3)]
    _write_cases(root / "ref", refs)
    out = {}
    for name, shift in (("A", 1), ("B", 2), ("C", 3), ("R", 2)):
        preds = [np.roll(s, shift + c % 2, axis=0) for c, s in enumerate(refs)]
        _write_cases(root / name, preds)
        regions = REGIONS_903 if name == "R" else [1, 2]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # nnU-Net's nanmean over the absent label's NaNs
            compute_metrics_on_folder(str(root / "ref"), str(root / name), str(root / f"{name}.json"), SimpleITKIO(),
                                      ".nii.gz", regions, num_processes=1)
        out[name] = root / f"{name}.json"
    return out


def _model_dir(results: Path, dataset: str, trainer: str, labels: dict) -> Path:
    model = results / dataset / f"{trainer}__nnUNetPlans__3d_fullres"
    model.mkdir(parents=True, exist_ok=True)
    (model / "dataset.json").write_text(json.dumps({"labels": labels, "file_ending": ".nii.gz"}))
    return model


def _fold(model: Path, fold: int, summary: Path | None = None, files: dict[str, str] | None = None) -> Path:
    fold_dir = model / f"fold_{fold}"
    if summary is not None:
        (fold_dir / "validation").mkdir(parents=True)
        shutil.copy(summary, fold_dir / "validation" / "summary.json")
    for name, text in (files or {}).items():
        (fold_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (fold_dir / name).write_text(text)
    return fold_dir


@pytest.fixture
def campaign(tmp_path, summaries) -> list[Task]:
    """Two datasets x two arms; some folds done, others trained without validation, running, not started, broken."""
    results = tmp_path / "results"
    ft_902 = _model_dir(results, "Dataset902_TwoCh", "nnUNetTrainerAdaptiveFT", LABELS_902)
    base_902 = _model_dir(results, "Dataset902_TwoCh", "nnUNetTrainer", LABELS_902)
    ft_903 = _model_dir(results, "Dataset903_Brain", "nnUNetTrainerAdaptiveFT", LABELS_903)
    base_903 = _model_dir(results, "Dataset903_Brain", "nnUNetTrainer", LABELS_903)
    log = "2026-01-01 10:00:00.000000: Epoch 2\n2026-01-01 10:00:05.000000: Epoch 3\n"
    folds = [
        ("Dataset902_TwoCh", "finetune", 0, _fold(ft_902, 0, summaries["A"])),
        ("Dataset902_TwoCh", "finetune", 1, _fold(ft_902, 1, summaries["B"])),
        ("Dataset902_TwoCh", "finetune", 2, _fold(ft_902, 2, summaries["C"])),
        ("Dataset902_TwoCh", "baseline", 0, _fold(base_902, 0, summaries["C"])),
        ("Dataset902_TwoCh", "baseline", 1, _fold(base_902, 1, summaries["A"])),
        ("Dataset902_TwoCh", "baseline", 2, _fold(base_902, 2, files={"checkpoint_final.pth": "x"})),
        ("Dataset903_Brain", "finetune", 0, _fold(ft_903, 0, summaries["R"])),
        ("Dataset903_Brain", "finetune", 1, _fold(ft_903, 1, files={"checkpoint_latest.pth": "x",
                                                                     "training_log_2026_1_1_10_00_00.txt": log})),
        ("Dataset903_Brain", "baseline", 0, base_903 / "fold_0"),
        ("Dataset903_Brain", "baseline", 1, _fold(base_903, 1, files={"validation/summary.json": "{"})),
    ]
    return [Task(d, "3d_fullres", arm, f, fold_dir) for d, arm, f, fold_dir in folds]


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "report.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _summary_value(summary: dict, key: str) -> float:
    return summary["foreground_mean"]["Dice"] if key == "foreground_mean" else summary["mean"][key]["Dice"]


def test_csv_rows_are_nnunet_numbers_exactly(campaign, tmp_path, summaries):
    result = write_report(campaign, tmp_path / "report")
    rows = _rows(tmp_path / "report")
    assert list(rows[0])[:6] == ["dataset", "configuration", "arm", "fold", "label", "dice"]
    assert result.folds_reported == 6 and len(rows) == 5 * 3 + 1 * 5  # 902: 2 labels + mean; 903: 4 regions + mean
    for row in rows:
        summary = json.loads(Path(row["summary"]).read_text())
        expected = _summary_value(summary, row["key"])
        if math.isnan(expected):
            assert row["dice"] == "NaN"  # as nnU-Net spells it in summary.json
        else:
            assert row["dice"] == repr(expected) and float(row["dice"]) == expected
    # one row per dataset, configuration, arm, fold and label (named from dataset.json), and the foreground mean
    got = {(r["dataset"], r["arm"], int(r["fold"]), r["label"]) for r in rows if r["dataset"] == "Dataset902_TwoCh"}
    assert got == {("Dataset902_TwoCh", arm, f, label) for arm, folds in (("finetune", (0, 1, 2)), ("baseline", (0, 1)))
                   for f in folds for label in ("edema", "lesion", MEAN_LABEL)}
    a = json.loads(summaries["A"].read_text())
    row = next(r for r in rows if (r["arm"], r["fold"], r["label"]) == ("finetune", "0", "lesion"))
    assert float(row["dice"]) == a["mean"]["2"]["Dice"] and float(row["iou"]) == a["mean"]["2"]["IoU"]
    assert row["configuration"] == "3d_fullres" and row["key"] == "2"


def test_regions_get_names_and_an_absent_label_is_nan(campaign, tmp_path):
    write_report(campaign, tmp_path / "report")
    rows = {r["label"]: r for r in _rows(tmp_path / "report") if r["dataset"] == "Dataset903_Brain"}
    assert {k: r["key"] for k, r in rows.items()} == {
        "whole": "(1, 2)", "core": "(2,)", "edge": "1", "rare": "3", MEAN_LABEL: "foreground_mean"}
    # nnU-Net writes NaN for a label absent from reference and prediction in every case, and a NaN foreground mean
    assert rows["rare"]["dice"] == "NaN" and math.isnan(float(rows["rare"]["dice"]))
    assert rows[MEAN_LABEL]["dice"] == "NaN"
    assert 0 < float(rows["whole"]["dice"]) < 1
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| rare | NaN |" in md and "NaN: nnU-Net's Dice of a label absent" in md


def test_markdown_means_sd_gain_and_folds_won(campaign, tmp_path, summaries):
    write_report(campaign, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    s = {k: json.loads(v.read_text()) for k, v in summaries.items()}
    assert s["A"]["mean"]["1"]["Dice"] > s["B"]["mean"]["1"]["Dice"] > s["C"]["mean"]["1"]["Dice"]
    for label, key in (("edema", "1"), ("lesion", "2"), (f"**{MEAN_LABEL}**", "foreground_mean")):
        def dice(name, key=key):
            return _summary_value(s[name], key)
        ft, base = [dice("A"), dice("B"), dice("C")], [dice("C"), dice("A")]  # folds 0, 1, 2 and 0, 1
        gains = [ft[0] - base[0], ft[1] - base[1]]  # the folds both arms have
        won = sum(g > 0 for g in gains)
        expected = (f"| {label} | {statistics.mean(ft):.3f} ± {statistics.stdev(ft):.3f} "
                    f"| {statistics.mean(base):.3f} ± {statistics.stdev(base):.3f} "
                    f"| {statistics.mean(gains):+.3f} ± {statistics.stdev(gains):.3f} | {won}/2 |")
        assert expected in md, expected
    assert "| label | finetune (n=3) | baseline (n=2) | gain finetune - baseline | folds won |" in md
    # the fine-tuned arm wins fold 0 (A over C) and loses fold 1 (B under A)
    assert "| edema |" in md and "| 1/2 |" in md
    assert f"| 2 | {_summary_value(s['C'], 'foreground_mean'):.3f} | - |" in md


def test_not_done_lists_every_fold_without_a_summary(campaign, tmp_path):
    result = write_report(campaign, tmp_path / "report")
    states = {m.id: m.state for m in result.missing}
    assert states == {
        "Dataset902_TwoCh/3d_fullres/baseline/fold_2": "trained, not validated",
        "Dataset903_Brain/3d_fullres/finetune/fold_1": "in progress",
        "Dataset903_Brain/3d_fullres/baseline/fold_0": "not started",
        "Dataset903_Brain/3d_fullres/baseline/fold_1": "summary unreadable",
    }
    md = (tmp_path / "report" / "report.md").read_text()
    not_done = md.split("## Not done", 1)[1]
    for task_id, state in states.items():
        assert f"| {task_id} | {state} |" in not_done
    assert "checkpoint_latest.pth; last logged epoch 3" in not_done
    assert "summary.json" in not_done and "6 of 10 folds have a validation summary; 4 not done" in md
    assert result.summary().startswith("report: 6 folds reported, 4 not done; wrote report.csv, report.md, report.png")


def test_png_is_an_image_of_sensible_size(campaign, tmp_path):
    from PIL import Image

    result = write_report(campaign, tmp_path / "report")
    png = tmp_path / "report" / "report.png"
    assert png in result.files
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert 600 <= width <= 2000 and 300 <= height <= 1200  # two panels side by side
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 20  # drawn, not blank


def test_out_dir_created_and_nothing_written_outside(campaign, tmp_path):
    def snapshot():
        return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")}

    before = snapshot()
    out = tmp_path / "campaign.campaign" / "report"
    result = write_report(campaign, out)
    after = snapshot()
    assert {p for p in after if p not in before} == {out.parent, out, *result.files}
    assert all(after[p] == v for p, v in before.items())
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "report.md", "report.png"]
    first = (out / "report.csv").read_text()
    write_report(campaign, out)  # again: replaced, same content, no leftovers
    assert (out / "report.csv").read_text() == first and len(list(out.iterdir())) == 3


def test_no_summaries_yet_still_writes_the_three_files(tmp_path):
    tasks = [Task("Dataset902_TwoCh", "3d_fullres", arm, 0, tmp_path / "nowhere" / arm / "fold_0")
             for arm in ("finetune", "baseline")]
    result = write_report(tasks, tmp_path / "report")
    assert result.folds_reported == 0 and len(result.missing) == 2
    assert (tmp_path / "report" / "report.csv").read_text().splitlines() == [
        "dataset,configuration,arm,fold,label,dice,iou,key,summary"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "0 of 2 folds have a validation summary" in md and "no fold folder" in md
    assert (tmp_path / "report" / "report.png").read_bytes()[:4] == b"\x89PNG"
    empty = write_report([], tmp_path / "empty")
    assert empty.folds_reported == 0 and "no training tasks" in (tmp_path / "empty" / "report.md").read_text()


def test_an_output_path_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "report").write_text("not a folder")
    with pytest.raises(ReportError, match=r"report folder .*report"):
        write_report([], tmp_path / "report")
    assert ReportError.exit_code == 2
