"""The backbone's CPU-side preprocessing: shorter side to the resize size, then a square crop.

An image comes decoded from `pipeline.images.decode_image`; `views` gives the crops (and their
mirror images) the features stage embeds, `resize_and_crop` the single centre crop a backbone
was trained on. PIL and numpy only, no jax.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from pipeline.images import to_rgb

#: PIL's filter for each ``resize_method`` of a `BackboneSpec` (antialiased when shrinking).
RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def resized_shorter(img: Image.Image, size: int, method: str) -> Image.Image:
    """Resize so that the shorter side is `size`, keeping the aspect ratio (torchvision rounding).

    Args:
      img: an RGB PIL image.
      size: the new shorter side.
      method: ``bicubic`` or ``bilinear`` (PIL filters, antialiased when shrinking).
    """
    w, h = img.size
    if w <= h:
        new = (size, max(1, int(size * h / w)))
    else:
        new = (max(1, int(size * w / h)), size)
    if new == (w, h):
        return img
    return img.resize(new, RESAMPLE[method])


def crop_box(width: int, height: int, size: int, where: str = "center") -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of a `size` x `size` crop.

    Args:
      width, height: the image size (both >= size).
      where: ``center`` (torchvision's rounding), ``top_left``, ``top_right``, ``bottom_left``
        or ``bottom_right``.
    """
    if where == "center":
        left, top = int(round((width - size) / 2.0)), int(round((height - size) / 2.0))
    else:
        v, hz = where.split("_")
        top = 0 if v == "top" else height - size
        left = 0 if hz == "left" else width - size
    return left, top, left + size, top + size


def resize_and_crop(img: Image.Image, spec, where: str = "center") -> np.ndarray:
    """The backbone's CPU-side preprocessing: shorter side to ``spec.resize_size``, then crop.

    Args:
      img: an RGB PIL image (from `decode_image`).
      spec: a `BackboneSpec` (uses ``resize_size``, ``resize_method``, ``input_size``).
      where: which crop (see `crop_box`); the centre crop is the backbone's preprocessing.

    Returns:
      uint8 array (S, S, 3), S = spec.input_size.
    """
    return views(img, spec, (where,))[0]


def views(img: Image.Image, spec, crops: Sequence[str] = ("center",), flip: bool = False) -> np.ndarray:
    """Several crops (and optionally their mirror images) of one resized image.

    Args:
      img: an RGB PIL image.
      spec: a `BackboneSpec`.
      crops: crop positions (see `crop_box`), in output order.
      flip: also emit each crop mirrored left-right, right after it.

    Returns:
      uint8 array (V, S, S, 3) with V = len(crops) * (2 if flip else 1).
    """
    if img.mode != "RGB":
        img = to_rgb(img)
    s = spec.input_size
    # A resize_size smaller than the crop would leave nothing to crop; resize to at least S.
    resized = resized_shorter(img, max(spec.resize_size, s), spec.resize_method)
    out = []
    for where in crops:
        a = np.asarray(resized.crop(crop_box(*resized.size, s, where)), dtype=np.uint8)  # (S, S, 3)
        out.append(a)
        if flip:
            out.append(a[:, ::-1])
    return np.stack(out)
