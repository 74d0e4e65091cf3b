"""Plans transfer with explicit nnU-Net roots: the environment is never changed, so one process (a campaign) can run
several transfers into different preprocessed roots. Fast: the targets' fingerprints are written beforehand, so no
nnU-Net worker process starts (the e2e tests cover fingerprint extraction and preprocessing)."""

from __future__ import annotations

import json
import os
import sys
import threading

import pytest
from plans_data import DATASET_JSON, tiny_plans, write_fingerprint

from nnunet_transfer.demo.synthetic import make_dataset
from nnunet_transfer.nnunet.plans import SourcePlans, transfer_plans

TARGET = "Dataset951_Tgt"
VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A raw root with the target (2 cases of 8x16x16 at 2x1x1 mm), two preprocessed roots holding its fingerprint,
    and an empty decoy root for the environment."""
    root = tmp_path_factory.mktemp("roots")
    make_dataset(root / "raw", 951, "Tgt", num_cases=2, shape=(8, 16, 16), spacing=(2, 1, 1), seed=1)
    for name in ("preA", "preB"):
        write_fingerprint(root / name / TARGET, (8, 16, 16), (2.0, 1.0, 1.0), 2)
    (root / "decoy").mkdir()
    return root


@pytest.fixture
def env(data, monkeypatch):
    """nnUNet_raw = the raw root, nnUNet_preprocessed = the decoy, nnUNet_results unset."""
    monkeypatch.setenv("nnUNet_raw", str(data / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(data / "decoy"))
    monkeypatch.delenv("nnUNet_results", raising=False)


def _source() -> SourcePlans:
    return SourcePlans(tiny_plans(), "tiny source", ["3d_fullres"], None, dict(DATASET_JSON))


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _assert_environment_unchanged(before):
    """Every nnUNet_* variable as before, and no variable changed (libraries may add their own, e.g. torch's
    TORCHINDUCTOR_CACHE_DIR)."""
    after = dict(os.environ)
    assert {k: after.get(k) for k in VARS} == {k: before.get(k) for k in VARS}
    assert {k: after.get(k) for k in before} == before


class _EnvironmentWatch:
    """Records every value the nnUNet_* variables take while the block runs (polled from another thread)."""

    def __enter__(self):
        self.seen: set[tuple[str | None, ...]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.001):
            self.seen.add(tuple(os.environ.get(v) for v in VARS))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_dry_run_never_changes_the_environment_nor_writes(data, monkeypatch, env):
    """Run on the old code (6c1289f) this fails: the dry run pointed nnUNet_preprocessed at a temporary folder for
    the whole process while it planned."""
    monkeypatch.setenv("nnUNet_preprocessed", str(data / "preA"))
    before, listing = dict(os.environ), _listing(data / "preA")
    with _EnvironmentWatch() as watch:
        transfer = transfer_plans(_source(), 951, "FT", dry_run=True)
    assert watch.seen == {(str(data / "raw"), str(data / "preA"), None)}
    _assert_environment_unchanged(before)
    assert _listing(data / "preA") == listing
    assert transfer.target_folder == data / "preA" / TARGET
    assert transfer.plans["original_median_spacing_after_transp"] == [2.0, 1.0, 1.0]  # the target's fingerprint


def test_two_transfers_land_in_their_own_roots(data, env):
    from nnunet_transfer.nnunet.plans import write_plans

    before = dict(os.environ)
    written = {}
    for name, patch in (("preA", None), ("preB", [16, 16, 32])):
        transfer = transfer_plans(_source(), 951, "FT", raw=data / "raw", preprocessed=data / name, patch_size=patch)
        assert transfer.target_folder == data / name / TARGET and transfer.raw_folder == data / "raw" / TARGET
        written[name] = write_plans(transfer)
    assert written == {n: data / n / TARGET / "FT.json" for n in ("preA", "preB")}
    patches = {n: json.loads(p.read_text())["configurations"]["3d_fullres"]["patch_size"] for n, p in written.items()}
    assert patches == {"preA": [16, 16, 16], "preB": [16, 16, 32]}
    assert (data / "preB" / TARGET / "dataset.json").is_file()
    assert _listing(data / "decoy") == []
    _assert_environment_unchanged(before)


def test_concurrent_transfers_in_threads_each_use_their_own_root(data, env):
    before, results, errors = dict(os.environ), {}, []

    def one(name):
        try:
            results[name] = transfer_plans(_source(), TARGET, f"Threads{name}", raw=data / "raw",
                                           preprocessed=data / name, dry_run=True)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(n,)) for n in ("preA", "preB")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert {n: t.target_folder for n, t in results.items()} == {n: data / n / TARGET for n in ("preA", "preB")}
    _assert_environment_unchanged(before)


def test_nnunet_paths_swaps_nnunets_globals_and_restores_them(data, tmp_path, monkeypatch, env):
    import nnunetv2.paths as paths
    from nnunetv2.experiment_planning.dataset_fingerprint import fingerprint_extractor
    from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner
    from nnunetv2.preprocessing.preprocessors import default_preprocessor
    from nnunetv2.utilities import dataset_name_id_conversion

    from nnunet_transfer.nnunet.plans.paths import nnunet_paths

    before = dict(os.environ)
    original = {v: getattr(paths, v) for v in VARS}
    holders = (paths, fingerprint_extractor, default_experiment_planner, default_preprocessor,
               dataset_name_id_conversion)
    (tmp_path / "late_user.py").write_text("from nnunetv2.paths import nnUNet_preprocessed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "late_user", raising=False)
    with nnunet_paths(raw=data / "raw", preprocessed=data / "preA"):
        for m in holders:
            assert m.nnUNet_preprocessed == str(data / "preA") and m.nnUNet_preprocessed.is_set()
        assert default_experiment_planner.nnUNet_raw.get() == str(data / "raw")
        assert paths.nnUNet_results is original["nnUNet_results"]  # not given: untouched
        assert dataset_name_id_conversion.convert_id_to_dataset_name(951) == TARGET
        import late_user

        assert late_user.nnUNet_preprocessed == str(data / "preA")
        with nnunet_paths(preprocessed=data / "preB"):
            assert default_preprocessor.nnUNet_preprocessed == str(data / "preB")
            assert default_preprocessor.nnUNet_raw == str(data / "raw")
        assert default_preprocessor.nnUNet_preprocessed == str(data / "preA")
        _assert_environment_unchanged(before)
    for m in (*holders, late_user):
        assert m.nnUNet_preprocessed is original["nnUNet_preprocessed"]
    assert all(getattr(paths, v) is original[v] for v in VARS)
    assert str(paths.nnUNet_preprocessed) == str(data / "decoy")  # nnU-Net reads the environment again


def test_write_and_preprocess_default_to_the_transfers_roots(data, env, tmp_path):
    from nnunet_transfer.errors import PlansError
    from nnunet_transfer.nnunet.plans import preprocess_transfer, write_plans

    transfer = transfer_plans(_source(), 951, "Elsewhere", raw=data / "raw", preprocessed=data / "preA", dry_run=True)
    with pytest.raises(PlansError, match=r"preA/Dataset951_Tgt/Elsewhere\.json: plans not written yet; call write_plans"):
        preprocess_transfer(transfer, 1)
    assert write_plans(transfer, preprocessed=tmp_path) == tmp_path / TARGET / "Elsewhere.json"
    assert not transfer.plans_file.exists() and _listing(data / "decoy") == []
    with pytest.raises(PlansError, match=r"Elsewhere\.json: exists already; pass --overwrite"):
        write_plans(transfer, preprocessed=tmp_path)
