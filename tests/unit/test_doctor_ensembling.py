"""``doctor``'s region-based ensembling check runs the installed nnU-Net's code and names a known regression."""

from __future__ import annotations

import numpy as np
from nnunetv2.ensembling.ensemble import merge_files

from nnunet_transfer.cli.doctor import check_ensembling
from nnunet_transfer.nnunet.ensembling import REGIONS_CLASS_ORDER, _case, _paint, check_region_ensembling


def _with(transform):
    """merge_files of the installed nnU-Net, fed the members' probabilities after ``transform`` (the regression)."""
    def merge(files, out, ending, reader_writer, label_manager, save=False):
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            changed = []
            for f in files:
                target = Path(tmp) / Path(f).name
                np.savez_compressed(target, probabilities=transform(np.load(f)["probabilities"]))
                target.with_suffix(".pkl").write_bytes(Path(f[:-4] + ".pkl").read_bytes())
                changed.append(str(target))
            merge_files(changed, out, ending, reader_writer, label_manager, save)
    return merge


def test_the_synthetic_case_tells_the_failures_apart():
    a, b = _case()
    average = (a + b) / 2
    good = _paint(average, REGIONS_CLASS_ORDER)
    assert set(np.unique(good)) == {0, 1, 2, 3}
    assert (a > 0.5).sum() != (b > 0.5).sum()  # the members disagree somewhere: the average decides
    twice = _paint(1 / (1 + np.exp(-average)), REGIONS_CLASS_ORDER)
    assert (twice == 3).mean() > 0.9 and not np.array_equal(twice, good)  # double sigmoid: nearly all "inner"


def test_installed_nnunet_ensembles_regions_correctly(capsys):
    assert check_region_ensembling() == []
    assert check_ensembling() is True
    assert capsys.readouterr().out.startswith("[ok] region-based ensembling: sigmoid once")


def _double_sigmoid_merge(files, out, ending, reader_writer, label_manager, save=False):
    """Ensembling as nnU-Net < 2.7 did it: average the members' probabilities, then the non-linearity again."""
    from batchgenerators.utilities.file_and_folder_operations import load_pickle
    from nnunetv2.ensembling.ensemble import average_probabilities

    probabilities = label_manager.apply_inference_nonlin(average_probabilities(files))
    segmentation = label_manager.convert_probabilities_to_segmentation(probabilities)
    reader_writer.write_seg(np.asarray(segmentation), out + ending, load_pickle(files[0][:-4] + ".pkl"))


def test_a_double_sigmoid_is_reported_by_name(capsys):
    problems = check_region_ensembling(_double_sigmoid_merge)
    assert problems == ["nnUNetv2_ensemble (merge_files) on region probabilities: the sigmoid is applied a second "
                        "time to the averaged probabilities (double sigmoid)"]
    assert check_ensembling(_double_sigmoid_merge) is False
    assert capsys.readouterr().out.startswith("[FAIL] region-based ensembling: nnUNetv2_ensemble (merge_files)")


def test_an_unknown_difference_is_counted():
    problems = check_region_ensembling(_with(lambda p: 1 - p))
    assert len(problems) == 1 and "voxels differ (unknown cause)" in problems[0]
