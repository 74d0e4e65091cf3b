"""The one atomic-write helper: a failed write leaves the old file and no temporary file behind."""

from __future__ import annotations

import json

import pytest

from nnunet_transfer.core.io import atomic_path, write_json_atomic, write_text_atomic


def test_write_replaces_and_creates_parents(tmp_path):
    path = tmp_path / "a" / "b" / "x.json"
    write_json_atomic(path, {"k": 1})
    write_json_atomic(path, {"k": 2})
    assert json.loads(path.read_text()) == {"k": 2}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "report.json", "old")
    with pytest.raises(TypeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        json.dumps(object())  # the serialisation fails after a partial write
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert path.read_text() == "old"


def test_temporary_keeps_the_suffix(tmp_path):
    """Writers that choose the format by suffix (PIL for progress.png) see the right one."""
    with atomic_path(tmp_path / "progress.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    assert (tmp_path / "progress.png").read_bytes() == b"x"
