"""nnU-Net's data folders for one ``with`` block, without touching ``os.environ``.

nnU-Net's planning and preprocessing code takes a dataset name and finds its folders through module globals: each
module does ``from nnunetv2.paths import nnUNet_raw, nnUNet_preprocessed`` at import (the fingerprint extractor,
the experiment planner, the preprocessor, the dataset-ID lookup). Changing the environment variables would reach
every other user of nnU-Net in the process, and nnU-Net versions that read them at import would not even see it.
:func:`nnunet_paths` instead points exactly those globals at the given folders and restores them on exit.

Scope and threads: the swap is process-wide while the block runs. Blocks are serialised by one lock (two plans
transfers in two threads run their nnU-Net steps one after the other, each with its own folders), but nnU-Net code
that another thread runs *outside* such a block meanwhile would see the swapped folders: run nnU-Net in one thread
at a time. The worker processes nnU-Net spawns for fingerprints and preprocessing get their files, plans and
output paths as arguments and do not read these globals; they inherit the unchanged environment.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["nnunet_paths"]

_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
_LOCK = threading.RLock()


class _Folder(str):
    """A fixed folder that also answers like ``nnunetv2.paths``' environment-backed paths (get, is_set, require)."""

    env_var_name: str

    def __new__(cls, path: str | os.PathLike, env_var_name: str = "") -> _Folder:  # default: unpickling
        obj = super().__new__(cls, os.fspath(path))
        obj.env_var_name = env_var_name
        return obj

    def get(self) -> str:
        return str.__str__(self)

    def is_set(self) -> bool:
        return True

    def require(self) -> str:
        return str.__str__(self)


def _swap(pairs: dict[str, tuple[object, object]]) -> None:
    """In every loaded module, rebind each global of those names that *is* the old object to the new one."""
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for var, (old, new) in pairs.items():
            if var in namespace and namespace[var] is old:
                namespace[var] = new


@contextmanager
def nnunet_paths(
    *, raw: str | os.PathLike | None = None, preprocessed: str | os.PathLike | None = None,
    results: str | os.PathLike | None = None,
) -> Iterator[None]:
    """Within the block nnU-Net uses these folders (None: the folder nnU-Net would use anyway). Modules first
    imported inside the block are restored on exit as well. Nestable; re-entrant in one thread."""
    import nnunetv2.paths as paths

    given = dict(zip(_VARS, (raw, preprocessed, results), strict=True))
    with _LOCK:
        pairs = {var: (getattr(paths, var), _Folder(p, var)) for var, p in given.items() if p is not None}
        _swap(pairs)
        try:
            yield
        finally:
            _swap({var: (new, old) for var, (old, new) in pairs.items()})
