"""Files: atomic writes (a reader, another rank, a resumed run or nnU-Net, never sees a half-written file), JSON and
YAML documents that must be mappings (plans, dataset.json, adaptation plans; recipes, campaign files)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

__all__ = ["atomic_path", "parse_yaml_mapping", "read_json_object", "read_text", "sha256_file", "write_json_atomic",
           "write_text_atomic"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same folder, same suffix); on success it replaces ``path`` in one
    ``os.replace``, on error it is removed and ``path`` is left as it was. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 2,
                      default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``data`` as JSON to ``path`` atomically; returns the path."""
    return write_text_atomic(path, json.dumps(data, indent=indent, default=default))


def parse_yaml_mapping(text: str, where: str, what: str, error: type[Exception]) -> dict[str, Any]:
    """Parse ``text`` (from ``where``: a path or a name) as a YAML mapping; anything else raises ``error`` naming
    ``where`` and ``what`` the document is ("a recipe", "a campaign file")."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise error(f"{where}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise error(f"{where}: {what} must be a YAML mapping, found {type(data).__name__}")
    return data


def read_text(path: str | os.PathLike, what: str = "", error: type[Exception] = ValueError) -> str:
    """The text of ``path``; a missing or unreadable file raises ``error`` naming the file and ``what`` it should be
    ("recipe", "campaign", "plans")."""
    label = f"{what} " if what else ""
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise error(f"{path}: {label}file not found") from None
    except OSError as e:
        raise error(f"{path}: {label}file not readable ({e.strerror or e})") from None


def read_json_object(path: str | os.PathLike, what: str = "", error: type[Exception] = ValueError) -> dict[str, Any]:
    """The JSON object in ``path``; a missing or unreadable file, invalid JSON or anything but an object raises
    ``error`` naming the file and ``what`` it should be ("plans", "dataset.json", "adaptation plan")."""
    path = Path(path)
    label = f"{what} " if what else ""
    text = read_text(path, what, error)
    try:
        data = json.loads(text)
    except ValueError as e:
        raise error(f"{path}: {what + ' is ' if what else ''}not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: {label}must be a JSON object, found {type(data).__name__}")
    return data


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
