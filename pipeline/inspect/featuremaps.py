"""Feature maps: what a chosen layer of the backbone extracts from a photo (the lesson's figure).

A layer's output is the activation a cut at the *next* layer hands over (`pipeline.models.cut`:
``split(backbone, at).trunk`` returns the activation entering ``at``), so the layers one can show
are every named layer except the final ``pool`` (its output is the pooled vector, not a map).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def viewable_layers(names: Sequence[str]) -> list[str]:
    """Layers whose output is a spatial map: all but the last (``pool``)."""
    return list(names[:-1])


def default_layers(names: Sequence[str]) -> list[str]:
    """An early, a middle and the last map-producing layer (the lesson shows a few depths)."""
    v = viewable_layers(names)
    if len(v) <= 3:
        return v
    picks = [v[max(1, len(v) // 8)], v[len(v) // 2], v[-1]]
    return list(dict.fromkeys(picks))


def cut_after(names: Sequence[str], layer: str) -> str:
    """The layer a cut must start at so that its trunk returns `layer`'s output."""
    return names[list(names).index(layer) + 1]


def top_channels(act: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` channels with the largest mean activation, most active first.

    Args:
      act: (h, w, C) one photo's activation.
    """
    score = act.reshape(-1, act.shape[-1]).mean(axis=0)  # (C,)
    return np.argsort(-score, kind="stable")[:k]


def channel_grid(act: np.ndarray, channels: Sequence[int], tile: int = 56, cols: int = 8,
                 pad: int = 2) -> np.ndarray:
    """The chosen channels of one activation as a grid of viridis tiles, each scaled to its own range.

    Args:
      act: (h, w, C).
      channels: channel indices, in display order.
      tile: side of one tile in pixels (nearest-neighbour upsampling keeps the layer's cells visible).
      cols: tiles per row.

    Returns:
      (H, W, 3) uint8.
    """
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    n = len(channels)
    rows = -(-n // cols)
    cols = min(cols, n)
    out = np.full((rows * (tile + pad) + pad, cols * (tile + pad) + pad, 3), 255, np.uint8)
    h, w = act.shape[:2]
    ys = (np.arange(tile) * h // tile)
    xs = (np.arange(tile) * w // tile)
    for i, c in enumerate(channels):
        m = act[..., c].astype(np.float64)
        lo, hi = m.min(), m.max()
        m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
        img = (cmap(m[ys][:, xs])[..., :3] * 255).astype(np.uint8)  # (tile, tile, 3)
        r, q = divmod(i, cols)
        out[pad + r * (tile + pad):pad + r * (tile + pad) + tile, pad + q * (tile + pad):pad + q * (tile + pad) + tile] = img
    return out


def beside(photo: np.ndarray, grid: np.ndarray, pad: int = 6) -> np.ndarray:
    """The photo (as tall as the grid, at least 116 px so it stays recognisable) left of the grid."""
    from PIL import Image

    h = grid.shape[0]
    side = min(max(h, 116), 2 * photo.shape[0])
    ph = np.asarray(Image.fromarray(photo).resize((side, side), Image.BILINEAR))
    canvas = np.full((max(h, side), side + pad + grid.shape[1], 3), 255, np.uint8)
    canvas[:side, :side] = ph
    canvas[:h, side + pad:] = grid
    return canvas


def activations(cuts: Sequence[Any], params: Any, pixels: np.ndarray) -> list[np.ndarray]:
    """Each cut's trunk output for a batch of photos: one (N, h, w, C) float32 array per cut."""
    import jax.numpy as jnp

    x = jnp.asarray(pixels, jnp.float32)
    return [np.asarray(c.trunk(params, x)) for c in cuts]
