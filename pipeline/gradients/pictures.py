"""PNG output for the gradient stages: single images, labelled grids, amplified perturbations."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 array as a PNG (lossless: the saved pixels are the evaluated ones)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, np.uint8)).save(path, format="PNG", optimize=False)
    return path


def amplified_perturbation(original: np.ndarray, adversarial: np.ndarray) -> np.ndarray:
    """The difference made visible: mid-grey plus the perturbation scaled to fill 0..255.

    Args:
      original, adversarial: (H, W, 3) uint8.

    Returns:
      (H, W, 3) uint8; 128 = unchanged, the largest change maps to 0 or 255.
    """
    d = adversarial.astype(np.float32) - original.astype(np.float32)
    peak = float(np.max(np.abs(d))) or 1.0
    return np.clip(np.round(128.0 + d * (127.0 / peak)), 0, 255).astype(np.uint8)


def grid(images: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str] = (),
         col_labels: Sequence[str] = (), pad: int = 4, label_height: int = 16,
         label_width: int = 0) -> np.ndarray:
    """Tile images into rows and columns with text labels.

    Args:
      images: rows of (S, S, 3) uint8 images (all the same size).
      row_labels: one label per row, drawn on the left (needs `label_width` > 0 or gets 110 px).
      col_labels: one label per column, drawn on top.
      pad: white gap between tiles, pixels.
      label_height: height of the column-label band.
      label_width: width of the row-label band (0: 110 px when row labels are given).

    Returns:
      (H, W, 3) uint8 image.
    """
    rows = [list(r) for r in images]
    n_rows, n_cols = len(rows), max((len(r) for r in rows), default=0)
    if not n_rows or not n_cols:
        return np.full((1, 1, 3), 255, np.uint8)
    h, w = rows[0][0].shape[:2]
    top = label_height if col_labels else 0
    left = (label_width or 110) if row_labels else 0
    canvas = Image.new("RGB", (left + n_cols * (w + pad) + pad, top + n_rows * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for c, text in enumerate(col_labels):
        draw.text((left + pad + c * (w + pad), 2), _fit(text, w, draw, font), fill="black", font=font)
    for r, row in enumerate(rows):
        y = top + pad + r * (h + pad)
        if r < len(row_labels):
            draw.text((4, y + h // 2 - 6), _fit(row_labels[r], left - 6, draw, font), fill="black", font=font)
        for c, img in enumerate(row):
            canvas.paste(Image.fromarray(np.asarray(img, np.uint8)), (left + pad + c * (w + pad), y))
    return np.asarray(canvas)


def _fit(text: str, width: int, draw: ImageDraw.ImageDraw, font) -> str:
    """Shorten `text` with an ellipsis until it fits in `width` pixels."""
    text = str(text)
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text


def resize_batch(images: np.ndarray, spec) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, S', S', 3) uint8 at another backbone's input size, whole image kept.

    The images are already what the first network saw (a centre crop), so they are resized with
    the other backbone's filter, not resized and cropped a second time.

    Args:
      images: uint8 images.
      spec: the other backbone's `BackboneSpec` (``input_size``, ``resize_method``).
    """
    size = spec.input_size
    if images.shape[1] == size:
        return np.asarray(images)
    method = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[spec.resize_method]
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), method)) for im in images])
