"""A panel with every parameter group's learning rate and the freeze phases, added under nnU-Net's progress.png."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_schedule_panel"]


def add_schedule_panel(png: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Redraw ``png`` (nnU-Net's progress plot) with a panel below it: per-group learning rates per epoch, the
    trainable fraction, and a dashed line wherever the trainable set changes (labelled with the groups unfrozen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    png = Path(png)
    if not png.is_file() or not rows:
        return
    image = mpimg.imread(str(png))
    h, w = image.shape[:2]
    width = w / 100
    panel_h = width * 0.35
    fig, (ax_img, ax) = plt.subplots(2, 1, figsize=(width, h / 100 + panel_h),
                                     gridspec_kw={"height_ratios": [h / 100, panel_h]})
    ax_img.imshow(image)
    ax_img.axis("off")
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
    fig.savefig(str(png))
    plt.close(fig)
