"""Photo -> the exported classifier's input, with PIL and numpy only (reads preprocess.json beside it).

    from preprocess import load
    x = load(["photo1.jpg", "photo2.jpg"])      # uint8 (B, S, S, 3) RGB

The same steps as the pipeline that trained the classifier: EXIF orientation applied, transparency
composited on white, large JPEGs decoded at 1/2, 1/4 or 1/8 scale while the shorter side stays
at least twice the resize size, shorter side resized with PIL's (antialiased) filter, then a
centre crop. Horizontal flips (test-time augmentation) happen inside the model.
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

CONFIG = json.loads((Path(__file__).resolve().parent / "preprocess.json").read_text())
_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def _rgb(im):
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "La", "RGBa", "PA") or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return im.convert("RGB")


def load_one(path):
    """One photo -> uint8 (S, S, 3)."""
    c = CONFIG
    size, resize = c["input_size"], max(c["resize_size"], c["input_size"])
    im = Image.open(path)
    if im.format == "JPEG":
        need, short = c["draft_margin"] * resize, min(im.size)
        scale = next((s for s in (8, 4, 2) if short // s >= need), 1)
        if scale > 1:
            im.draft(None, (im.size[0] // scale, im.size[1] // scale))
    im.load()
    ImageOps.exif_transpose(im, in_place=True)
    im = _rgb(im)
    w, h = im.size
    new = (resize, max(1, int(resize * h / w))) if w <= h else (max(1, int(resize * w / h)), resize)
    if new != (w, h):
        im = im.resize(new, _FILTERS[c["resize_method"]])
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def load(paths):
    """Photos -> uint8 (B, S, S, 3), the model's input."""
    return np.stack([load_one(p) for p in paths])
