"""``lr_table.json``: every epoch's per-group learning rates and trainable groups, written as training goes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nnunet_transfer.core.io import write_text_atomic

__all__ = ["LRTable", "table_text"]


def _row_text(row: dict[str, Any]) -> str:
    """``row`` as ``json.dumps(rows, indent=1)`` writes it as an element of the list (one level deeper)."""
    return " " + json.dumps(row, indent=1).replace("\n", "\n ")  # JSON strings hold no raw newline


def table_text(texts: list[str]) -> str:
    """The list of rows whose element texts (:func:`_row_text`) are ``texts``: ``json.dumps(rows, indent=1)``."""
    return "[\n" + ",\n".join(texts) + "\n]" if texts else "[]"


class LRTable:
    """The rows of ``lr_table.json`` (dicts with an ``"epoch"``) and the file, rewritten atomically on every
    :meth:`record` with exactly the text of ``json.dumps(rows, indent=1)``; each row is serialised once only."""

    def __init__(self, path: str | os.PathLike, rows: list[dict[str, Any]] | None = None) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = list(rows or [])
        self._texts = [_row_text(r) for r in self.rows]

    @classmethod
    def load(cls, path: str | os.PathLike) -> LRTable:
        """The table in ``path`` (a resumed run's earlier epochs), or an empty one when there is no file."""
        path = Path(path)
        return cls(path, json.loads(path.read_text()) if path.is_file() else [])

    def record(self, row: dict[str, Any]) -> None:
        """Add ``row`` after dropping the rows of its epoch and later ones (a resumed run repeats them), and write
        the file."""
        epoch = row["epoch"]
        if any(r["epoch"] >= epoch for r in self.rows):
            keep = [i for i, r in enumerate(self.rows) if r["epoch"] < epoch]
            self.rows = [self.rows[i] for i in keep]
            self._texts = [self._texts[i] for i in keep]
        self.rows.append(row)
        self._texts.append(_row_text(row))
        write_text_atomic(self.path, table_text(self._texts))
