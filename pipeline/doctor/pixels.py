"""Pixels for the doctor: content hashes (exact duplicates) and a cheap thumbnail check.

A pair of images whose features are near-identical is *confirmed* when their small grey
thumbnails agree: the best Pearson correlation, at 16 x 16, of a window of one (up to a fifth
cut from each side, anywhere) with the whole of the other, plain or mirrored. Re-encoding,
resizing and a small crop keep it near 1; two distinct photos of the same animal taken a second
apart (which the backbone finds as similar as a copy) do not. The calibration behind the default threshold is `tools/calibrate_doctor.py`.

Images are read through the data stage's `DataSet.sources`: files for a folder source, encoded
bytes for tfds (read sequentially, so tfds pays one pass over its records).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

# A pair is compared at this resolution, after trying windows of one image against the whole of
# the other: scales x positions cover a crop of up to a fifth of each side, anywhere.
SIDE = 16
SCALES = (1.0, 0.9, 0.8)
POSITIONS = (0.0, 0.5, 1.0)


def thumbnail(source: bytes | Path, size: int) -> np.ndarray:
    """A small grey copy of an image, `size` px on its longer side, float32, EXIF rotation applied."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as im:
        im.draft("L", (size * 4, size * 4))  # JPEG: decode at a reduced scale, much faster
        im = ImageOps.exif_transpose(im).convert("L")
        w, h = im.size
        s = size / max(w, h)
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BOX)
    return np.asarray(im, np.float32)


def _window(a: np.ndarray, scale: float, dx: float, dy: float, side: int) -> np.ndarray:
    """The (side, side) resampling of a window of `a` (scale of each side, position 0..1)."""
    from PIL import Image

    h, w = a.shape
    cw, ch = w * scale, h * scale
    x0, y0 = (w - cw) * dx, (h - ch) * dy
    im = Image.fromarray(a, mode="F")
    return np.asarray(im.resize((side, side), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch)))


def _unit(v: np.ndarray) -> np.ndarray | None:
    v = v.ravel() - v.mean()
    n = float(np.sqrt(v @ v))
    return v / n if n > 1e-6 else None


def correlation(a: np.ndarray, b: np.ndarray, side: int = SIDE) -> float:
    """How well two thumbnails agree: the best Pearson correlation of a window of one with the whole
    of the other, over `SCALES` x `POSITIONS` windows, both ways round, plain and mirrored."""
    best = -1.0
    for src, dst in ((a, b), (b, a)):
        whole = _window(dst, 1.0, 0.5, 0.5, side)
        targets = [t for t in (_unit(whole), _unit(whole[:, ::-1])) if t is not None]
        if not targets:
            return 1.0 if np.allclose(a.mean(), b.mean(), atol=2.0) else 0.0  # flat images
        for s in SCALES:
            for dx in (POSITIONS if s < 1 else (0.5,)):
                for dy in (POSITIONS if s < 1 else (0.5,)):
                    u = _unit(_window(src, s, dx, dy, side))
                    if u is not None:
                        best = max(best, max(float(u @ t) for t in targets))
    return best


def read_all(data: Any, wanted: Mapping[str, set[int]], size: int, hashes: bool
             ) -> tuple[dict[tuple[str, int], str], dict[tuple[str, int], np.ndarray], list[str]]:
    """One pass over the images: sha1 of every file (if `hashes`), thumbnails of the `wanted` ones.

    Args:
      data: the data stage's `pipeline.sources.DataSet`.
      wanted: split -> row indices whose thumbnails are needed.
      size: side of the compared thumbnails; 4x that is kept (longer side) to cut windows from.
      hashes: hash every image's bytes (exact duplicates); otherwise only the wanted are read.

    Returns:
      ((split, row) -> sha1 hex, (split, row) -> thumbnail, problems: "split/id: reason" lines
      for images that could not be read back).
    """
    import concurrent.futures
    import os

    digests: dict[tuple[str, int], str] = {}
    thumbs: dict[tuple[str, int], np.ndarray] = {}
    problems: list[str] = []
    folder = data.info.get("source") == "folder"

    def thumb(split: str, i: int, raw: bytes) -> None:
        try:
            thumbs[(split, i)] = thumbnail(raw, 4 * size)
        except (OSError, ValueError) as e:
            problems.append(f"{split}/{data.splits[split].ids[i]}: {type(e).__name__}: {e}")

    # Hashing runs here (fast, sequential reads); decoding thumbnails in threads (PIL releases
    # the GIL), so only the candidates' bytes wait in memory, never a whole tfds split.
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        jobs = []
        for split, rec in data.splits.items():
            need = wanted.get(split, set())
            if not len(rec) or (not hashes and not need):
                continue
            if folder and not hashes:
                items: Iterable = ((i, Path(data.info["path"]) / rec.ids[i]) for i in sorted(need))
            else:
                items = enumerate(data.sources(split))
            for i, src in items:
                try:
                    raw = bytes(src) if isinstance(src, (bytes, bytearray)) else Path(src).read_bytes()
                except OSError as e:
                    problems.append(f"{split}/{rec.ids[i]}: {type(e).__name__}: {e}")
                    continue
                if hashes:
                    digests[(split, i)] = hashlib.sha1(raw).hexdigest()
                if i in need:
                    jobs.append(pool.submit(thumb, split, i, raw))
        for j in jobs:
            j.result()
    return digests, thumbs, sorted(problems)


def exact_groups(digests: Mapping[tuple[str, int], str]) -> list[list[tuple[str, int]]]:
    """Groups of two or more images with identical bytes, each sorted, largest group first."""
    by: dict[str, list[tuple[str, int]]] = {}
    for key, h in digests.items():
        by.setdefault(h, []).append(key)
    groups = [sorted(g, key=_order) for g in by.values() if len(g) > 1]
    return sorted(groups, key=lambda g: (-len(g), _order(g[0])))


_SPLIT_RANK = {"train": 0, "val": 1, "test": 2}


def _order(key: tuple[str, int]) -> tuple[int, int]:
    return _SPLIT_RANK.get(key[0], 3), key[1]


def confirm(pairs: Sequence[tuple[tuple[str, int], tuple[str, int]]],
            thumbs: Mapping[tuple[str, int], np.ndarray], side: int = SIDE) -> list[float | None]:
    """Thumbnail correlation of each pair; None where an image could not be read."""
    out: list[float | None] = []
    for a, b in pairs:
        ta, tb = thumbs.get(a), thumbs.get(b)
        out.append(None if ta is None or tb is None else round(correlation(ta, tb, side), 4))
    return out
