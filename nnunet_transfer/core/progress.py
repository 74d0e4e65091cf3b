"""Progress formatting shared by the console front ends (the demo's step progress, a campaign's task lines)."""

from __future__ import annotations

__all__ = ["format_elapsed"]


def format_elapsed(seconds: float) -> str:
    """``0:41``, ``12:05``, ``1:02:03``."""
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
