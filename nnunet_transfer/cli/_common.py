"""Helpers shared by the commands: the checkpoint-reading flags and the ``--json`` output."""

from __future__ import annotations

import argparse
from typing import Any

from nnunet_transfer.core.io import write_json_atomic

__all__ = ["add_load_options", "write_json"]


def add_load_options(p: argparse.ArgumentParser, container: bool = True) -> None:
    if container:
        p.add_argument("--container", help="entry of the checkpoint that holds the weights (dotted for nested ones)")
    p.add_argument("--allow-global", action="append", default=[], metavar="NAME",
                   help="allow this global for safe (weights_only) loading; repeatable")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle without restrictions: only for files you trust (can run code)")
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON to PATH")


def write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        write_json_atomic(path, data, default=str)


