"""Draw the 2-D map as a PNG and give each point's position on that PNG (for the hover)."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np


def class_colours(n: int) -> np.ndarray:
    """(n, 3) distinct-ish RGB colours in [0, 1]: tab20 then tab20b/c, then hues."""
    from matplotlib import colormaps

    base = [colormaps[m](np.arange(20) / 20 + 0.025)[:, :3] for m in ("tab20", "tab20b", "tab20c")]
    cols = np.concatenate(base)
    if n > len(cols):
        extra = colormaps["hsv"](np.linspace(0, 1, n - len(cols), endpoint=False))[:, :3]
        cols = np.concatenate([cols, extra])
    return cols[:n]


def plot_text(name: str) -> str:
    """A name from the data as plain matplotlib text: no mathtext (``$``), no control characters
    (matplotlib warns about a glyph it lacks, and that warning would carry a raw terminal escape
    to stderr); both shown escaped."""
    from pipeline.errors import terminal_safe

    return terminal_safe(str(name)).replace("$", "\\$")


def map_png(xy: np.ndarray, labels: np.ndarray, classes: Sequence[str], test: np.ndarray, wrong: np.ndarray,
            title: str, dpi: int = 100, size: float = 8.0) -> tuple[bytes, np.ndarray]:
    """Scatter plot of the map; returns (PNG bytes, (N, 2) point positions as fractions of the PNG).

    Args:
      xy: (N, 2) coordinates in [-1, 1].
      labels: (N,) true class per point.
      classes: class names.
      test: (N,) bool, point from the test split (drawn larger, on top; train points faded).
      wrong: (N,) bool, the head gets the point wrong (black cross over the point).
      title: axes title.

    Returns:
      png, pos: pos[i] = (x, y) of point i as fractions of the image's width and height from its
      top-left corner, so a page can find the point under the mouse at any display size.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = class_colours(len(classes))
    legend_w = 2.6 if len(classes) <= 40 else 0.0
    fig = plt.figure(figsize=(size + legend_w, size), dpi=dpi)
    # Fixed axes rectangle (no tight bbox), so data coordinates map to image pixels exactly.
    ax = fig.add_axes([0.04 * size / (size + legend_w), 0.04, 0.92 * size / (size + legend_w), 0.9])
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    tr = ~test
    ax.scatter(xy[tr, 0], xy[tr, 1], s=5, c=cols[labels[tr]], alpha=0.35, linewidths=0)
    ax.scatter(xy[test, 0], xy[test, 1], s=18, c=cols[labels[test]], edgecolors="white", linewidths=0.4)
    m = wrong & test
    ax.scatter(xy[m, 0], xy[m, 1], s=30, c="black", marker="x", linewidths=1.0)
    if legend_w:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], marker="o", ls="", color=cols[i], label=plot_text(c)) for i, c in enumerate(classes)]
        handles.append(Line2D([], [], marker="x", ls="", color="black", label="mistake (test)"))
        fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False, ncol=1 if len(classes) <= 24 else 2,
                   handletextpad=0.2, columnspacing=0.6)
    fig.canvas.draw()
    px = ax.transData.transform(np.asarray(xy, np.float64))  # display pixels, origin bottom-left
    w, h = fig.canvas.get_width_height()
    pos = np.stack([px[:, 0] / w, 1.0 - px[:, 1] / h], axis=1)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue(), pos.astype(np.float32)
