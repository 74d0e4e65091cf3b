"""The ``nnunet-transfer`` command line: one module per command (inspect, check, plans, doctor, demo, campaign,
export, share, classify-demo, gpu-check, adapters).

Exit codes: 0 success (the load passes the guard), 1 the load would not pass the guard (or doctor found a
problem), 2 unusable input. Expected errors print one message, no traceback, and create no files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nnunet_transfer.errors import TransferError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (each command module registers its own sub-parser)."""
    from nnunet_transfer._version import __version__
    from nnunet_transfer.cli import (
        adapters,
        campaign,
        check,
        classify_demo,
        demo,
        doctor,
        export,
        gpu_check,
        inspect,
        plans,
        share,
    )

    parser = argparse.ArgumentParser(prog="nnunet-transfer", description="Transfer learning for nnU-Net v2.")
    parser.add_argument("--version", action="version", version=f"nnunet-transfer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (inspect, check, plans, doctor, demo, campaign, export, share, classify_demo, gpu_check, adapters):
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nnunet-transfer``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except TransferError as e:
        print(f"nnunet-transfer {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
