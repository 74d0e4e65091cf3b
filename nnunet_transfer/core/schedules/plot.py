"""A panel with every parameter group's learning rate and the freeze phases, added under nnU-Net's progress.png."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nnunet_transfer.core.io import atomic_path

__all__ = ["add_schedule_panel"]


def add_schedule_panel(png: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Append a panel under ``png`` (nnU-Net's progress plot): per-group learning rates per epoch, the trainable
    fraction, and a dashed line wherever the trainable set changes (labelled with the groups unfrozen).

    Only the panel is drawn; it is pasted under nnU-Net's image as pixels (redrawing the 30x54-inch figure through
    matplotlib took ten times longer than nnU-Net's own plot, every epoch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    png = Path(png)
    if not png.is_file() or not rows:
        return
    with Image.open(png) as img:
        base = img.convert("RGBA")
    width = base.width / 100
    fig, ax = plt.subplots(figsize=(width, width * 0.35), dpi=100)
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
    fig.canvas.draw()
    panel = Image.frombuffer("RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba()).copy()
    plt.close(fig)
    out = Image.new("RGBA", (base.width, base.height + panel.height), "white")
    out.paste(base, (0, 0))
    out.paste(panel, (0, base.height))
    with atomic_path(png) as tmp:
        out.save(tmp, format="PNG", compress_level=1)
