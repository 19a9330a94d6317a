"""Augmented training views for the trunk cache, decoded from the original photo each time.

Row 0 of every image is the backbone's own preprocessing (shorter side to ``resize_size``, centre
crop), so the cached trunk reproduces the features stage's rows exactly. Training images get
``views`` more rows: a random resized crop (Inception-style: area fraction in [min_scale, 1],
aspect ratio log-uniform in [3/4, 4/3], taken from the ORIGINAL photo and resized straight to the
input size, so no resolution is lost to a first resize), mirrored with probability 1/2, and
optionally a brightness/contrast/saturation jitter.

Each view's randomness is drawn from ``numpy.random.default_rng((seed, image index, view))``, a
pure function of the image's position in its split: a resumed trunk pass writes bit-identical
shards, whatever the order threads finish in.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from pipeline import resize


@dataclasses.dataclass(frozen=True)
class ViewPlan:
    """What views one image gets.

    Attributes:
      views: augmented views after the centre view (0: centre view only).
      flip: mirror with probability 1/2.
      crop: random resized crops (else the augmented views use the centre crop).
      min_scale: smallest crop area, as a fraction of the photo's.
      color_jitter: strength s of brightness/contrast/saturation factors drawn from [1-s, 1+s].
      seed: base seed.
    """

    views: int = 0
    flip: bool = True
    crop: bool = True
    min_scale: float = 0.35
    color_jitter: float = 0.0
    seed: int = 0


def random_crop_box(width: int, height: int, rng: np.random.Generator, min_scale: float) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop of area fraction in [min_scale, 1], aspect 3/4..4/3."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    side = min(width, height)  # fallback (very elongated photos): the central square
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def image_views(img: Image.Image, spec: Any, plan: ViewPlan, index: int) -> np.ndarray:
    """uint8 (1 + plan.views, S, S, 3): the centre view, then the augmented ones.

    Args:
      img: the decoded photo (RGB PIL image, `pipeline.images.decode_image`).
      spec: the backbone's `BackboneSpec`.
      plan: the views to take.
      index: the image's index in its split (seeds its views).
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    s = spec.input_size
    out = [resize.resize_and_crop(img, spec)]
    for v in range(1, plan.views + 1):
        rng = np.random.default_rng((plan.seed, index, v))
        if plan.crop:
            box = random_crop_box(*img.size, rng, plan.min_scale)
            view = img.resize((s, s), resize.RESAMPLE[spec.resize_method], box=box)
        else:
            view = Image.fromarray(out[0])
        if plan.color_jitter > 0:
            j = plan.color_jitter
            for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                view = enhance(view).enhance(float(rng.uniform(1 - j, 1 + j)))
        a = np.asarray(view, dtype=np.uint8)
        if plan.flip and rng.random() < 0.5:
            a = a[:, ::-1]
        out.append(a)
    return np.stack(out)
