"""A panel with every parameter group's learning rate and the freeze phases, added under nnU-Net's progress.png."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nnunet_transfer.core.png import append_rows

if TYPE_CHECKING:
    import numpy as np

__all__ = ["SchedulePanel", "add_schedule_panel", "render_schedule_panel"]


def render_schedule_panel(rows: Sequence[dict[str, Any]], width: int) -> np.ndarray:
    """The panel for an image ``width`` pixels wide, as (height, width, 4) uint8 RGBA: per-group learning rates per
    epoch, the trainable fraction, and a dashed line wherever the trainable set changes (labelled with the groups
    unfrozen). Drawn through matplotlib's object API (no pyplot: safe outside the main thread while pyplot is not
    in use) with the rcParams in force, which nnU-Net's own plot sets (seaborn's style)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    inches = width / 100
    fig = Figure(figsize=(inches, inches * 0.35), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.subplots()
    epochs = [r["epoch"] for r in rows]
    for group in rows[-1]["lr"]:
        ax.plot(epochs, [r["lr"].get(group, 0.0) for r in rows], linewidth=3, label=group)
    ax.set_xlabel("epoch", fontsize=28)
    ax.set_ylabel("learning rate per group", fontsize=28)
    ax.tick_params(labelsize=22)
    ax2 = ax.twinx()
    ax2.plot(epochs, [r.get("trainable_fraction", 0.0) for r in rows], "k:", linewidth=3, label="trainable fraction")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("trainable fraction of parameters", fontsize=28)
    ax2.tick_params(labelsize=22)
    previous: set[str] = set()
    for r in rows:
        now = set(r["trainable"])
        if now != previous:
            ax.axvline(r["epoch"], color="grey", linestyle="--", linewidth=2)
            new = sorted(now - previous)
            label = ", ".join(new) if len(new) <= 3 else f"{len(new)} groups"
            ax.text(r["epoch"], ax.get_ylim()[1], f" +{label}", rotation=90, va="top", fontsize=16)
        previous = now
    ax.legend(loc="upper right", fontsize=18, ncol=2)
    fig.tight_layout()
    canvas.draw()
    return np.array(canvas.buffer_rgba())  # a copy: the canvas' buffer goes with the figure


class SchedulePanel:
    """Adds the panel under a progress.png; keeps the last panel drawn and reuses it while the rows and the width
    are the same (nnU-Net redraws progress.png every epoch, the panel changes only with the rows)."""

    def __init__(self) -> None:
        self._drawn: tuple[int, list[dict[str, Any]], np.ndarray] | None = None
        self.renders = 0  # panels drawn (not reused)

    def panel(self, rows: Sequence[dict[str, Any]], width: int) -> np.ndarray:
        """The panel for ``rows`` at ``width`` pixels, drawn or reused."""
        rows = list(rows)
        if self._drawn is not None and self._drawn[0] == width and self._drawn[1] == rows:
            return self._drawn[2]
        pixels = render_schedule_panel(rows, width)
        self.renders += 1
        self._drawn = (width, rows, pixels)
        return pixels

    def add_to(self, png: str | Path, rows: Sequence[dict[str, Any]]) -> None:
        """Append the panel under ``png`` (nnU-Net's progress plot) as pixels, atomically; nothing when ``png`` does
        not exist or there are no rows. (Redrawing nnU-Net's 30x54-inch figure through matplotlib took ten times
        longer than nnU-Net's own plot; the image is not decoded either: see :mod:`nnunet_transfer.core.png`.)"""
        png = Path(png)
        if not rows or not png.is_file():
            return
        append_rows(png, self.panel(rows, _png_width(png)), compress_level=1)


def _png_width(png: Path) -> int:
    from PIL import Image

    with Image.open(png) as img:  # reads the header only
        return img.width


def add_schedule_panel(png: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Append a panel under ``png`` (nnU-Net's progress plot), synchronously: see :class:`SchedulePanel`."""
    SchedulePanel().add_to(png, rows)
