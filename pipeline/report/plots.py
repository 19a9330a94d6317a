"""Matplotlib figures of the report, returned as PNG bytes (Agg backend, no display needed).

Sizes and font sizes follow the number of classes so that 37 class names stay readable: the
figure grows with the class count instead of shrinking the labels.
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig, dpi: int) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return buf.getvalue()


def _label_size(k: int) -> float:
    return 10.0 if k <= 20 else (9.0 if k <= 50 else 7.0)


def confusion_matrix_png(cm: Sequence[Sequence[int]], classes: Sequence[str], title: str = "",
                         dpi: int = 100) -> bytes:
    """Heat map of a confusion matrix: blue = correct, red = mistakes, depth = share of the row.

    Args:
      cm: (K, K) counts, row = true class, column = predicted class.
      classes: K class names.
      title: drawn above the matrix.
      dpi: resolution of the PNG.

    Returns:
      PNG bytes.
    """
    plt = _plt()
    cm = np.asarray(cm, dtype=np.int64)
    k = cm.shape[0]
    if cm.shape != (k, k) or len(classes) != k:
        raise ValueError(f"confusion matrix of shape {cm.shape} does not match {len(classes)} class names")
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    # Correct predictions (diagonal) in blue, mistakes in red, so that errors stand out even
    # when every cell holds a count of 1; depth of colour = share of the true class.
    eye = np.eye(k, dtype=bool)
    shade = 0.25 + 0.75 * share
    rgba = np.where(eye[..., None], plt.get_cmap("Blues")(shade), plt.get_cmap("Reds")(shade))
    rgba[cm == 0] = (1.0, 1.0, 1.0, 1.0)
    side = float(np.clip(0.3 * k + 3.0, 4.5, 18.0))
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(rgba, interpolation="nearest")
    fs = _label_size(k)
    ax.set_xticks(range(k), labels=list(classes), rotation=90, fontsize=fs)
    ax.set_yticks(range(k), labels=list(classes), fontsize=fs)
    ax.set_xlabel("predicted class", fontsize=fs + 2)
    ax.set_ylabel("true class", fontsize=fs + 2)
    ax.tick_params(length=2)
    # Faint grid between cells so a row can be followed across 37 columns.
    ax.set_xticks(np.arange(-0.5, k, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, k, 1), minor=True)
    ax.grid(which="minor", color="#e4e7ec", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    count_fs = float(np.clip(260.0 / max(k, 1), 7.0, 12.0))
    for i, j in zip(*np.nonzero(cm)):
        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=count_fs,
                color="white" if shade[i, j] > 0.6 else "#1d2939", fontweight="bold" if i == j else "normal")
    if title:
        ax.set_title(title, fontsize=fs + 4, pad=10)
    return _png(fig, dpi)


def per_class_bars_png(names: Sequence[str], values: Sequence[float], supports: Sequence[int],
                       reference: float | None = None, title: str = "", xlabel: str = "accuracy (recall)",
                       dpi: int = 100) -> bytes:
    """Horizontal bars, one per class, in the order given (worst first reads top-down).

    Args:
      names, values, supports: per class, already sorted; values in [0, 1].
      reference: a vertical line (the overall accuracy), or None.
      title, xlabel: texts.
      dpi: resolution.

    Returns:
      PNG bytes.
    """
    plt = _plt()
    k = len(names)
    fs = _label_size(k)
    fig, ax = plt.subplots(figsize=(9.5, max(2.2, 0.27 * k + 1.2)))
    vals = np.asarray(values, dtype=np.float64)
    colors = plt.get_cmap("RdYlGn")(0.1 + 0.8 * np.clip(vals, 0, 1))
    y = np.arange(k)
    ax.barh(y, vals, color=colors, edgecolor="#667085", linewidth=0.4, height=0.75)
    ax.set_yticks(y, labels=list(names), fontsize=fs)
    ax.invert_yaxis()  # first given (worst) on top
    ax.set_xlim(0, 1.18)
    ax.set_xticks(np.linspace(0, 1, 6), labels=[f"{int(t * 100)}%" for t in np.linspace(0, 1, 6)], fontsize=fs)
    ax.set_xlabel(xlabel, fontsize=fs + 1)
    for i, (v, n) in enumerate(zip(vals, supports)):
        ax.text(min(v, 1.0) + 0.01, i, f"{v:.0%}  (n={n})", va="center", fontsize=fs - 1, color="#344054")
    if reference is not None:
        ax.axvline(reference, color="#2f6fdf", linestyle="--", linewidth=1)
        ax.text(reference, -0.9, f"overall {reference:.0%}", color="#2f6fdf", fontsize=fs - 1, ha="center")
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_ylim(k - 0.5, -1.3)
    if title:
        ax.set_title(title, fontsize=fs + 3, pad=6)
    return _png(fig, dpi)


def learning_curves_png(curves: Mapping[str, tuple], title: str = "Learning curve",
                        ylabel: str = "test accuracy", dpi: int = 100) -> bytes:
    """Learning curves in one plot: a colour per series, a shaded band of +-1 std where given.

    Args:
      curves: name -> (x label, x values, {series: y values}, {series: y std}); the name
        prefixes the series labels when there are several curves.
      title, ylabel: texts.
      dpi: resolution.

    Returns:
      PNG bytes.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.0, 4.4))
    colors = plt.get_cmap("tab10").colors
    xlabel, xs_all, ys_all, c = "", [], [], 0
    for head, (xk, xs, series, std) in curves.items():
        xlabel = xlabel or xk
        for name, ys in series.items():
            pts = [(a, b, (std.get(name) or [0.0] * len(xs))[i] or 0.0)
                   for i, (a, b) in enumerate(zip(xs, ys)) if a is not None and b is not None]
            if not pts:
                continue
            px, py, ps = (np.asarray(v, np.float64) for v in zip(*pts))
            label = name.replace("_", " ")
            color = colors[c % len(colors)]
            c += 1
            ax.plot(px, py, marker="o", markersize=4, linewidth=1.8, color=color,
                    label=f"{head}: {label}" if len(curves) > 1 else label)
            if ps.any():
                ax.fill_between(px, py - ps, py + ps, color=color, alpha=0.15, linewidth=0)
            xs_all += list(px)
            ys_all += list(py)
    if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) > 20:
        ax.set_xscale("log")
    elif xs_all and all(float(x).is_integer() for x in xs_all):
        ax.xaxis.set_major_locator(plt.matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel(xlabel.replace("_", " "), fontsize=11)
    if ys_all and all(0 <= y <= 1 for y in ys_all):
        ax.yaxis.set_major_formatter(plt.matplotlib.ticker.PercentFormatter(1.0))
    ax.set_ylabel(ylabel, fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=9.5, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title(title, fontsize=12)
    return _png(fig, dpi)


def training_png(panels: Sequence[dict], dpi: int = 100) -> bytes:
    """Small panels of how each head was fitted, side by side.

    Args:
      panels: each ``{"title", "x", "xlabel", "series": {name: ys}, "logx": bool, "mark": x or None,
        "percent": bool}``: a hyperparameter sweep (val accuracy against C) or losses per epoch.
      dpi: resolution.

    Returns:
      PNG bytes.
    """
    plt = _plt()
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.6), squeeze=False)
    for ax, p in zip(axes[0], panels):
        for name, ys in p["series"].items():
            ax.plot(p["x"], ys, marker="o" if len(p["x"]) < 30 else None, markersize=3.5, linewidth=1.6,
                    label=name.replace("_", " "))
        if p.get("logx"):
            ax.set_xscale("log")
        if p.get("mark") is not None:
            ax.axvline(p["mark"], color="#667085", linestyle="--", linewidth=1)
        if p.get("percent"):
            ax.yaxis.set_major_formatter(plt.matplotlib.ticker.PercentFormatter(1.0))
        ax.set_xlabel(p["xlabel"], fontsize=10.5)
        ax.set_title(p["title"], fontsize=11.5)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(fontsize=9, frameon=False)
    fig.tight_layout()
    return _png(fig, dpi)
