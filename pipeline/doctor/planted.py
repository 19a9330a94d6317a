"""Known problems to plant in real photos: re-encoded copies, swapped labels, off-domain images.

Used by the threshold calibration (`tools/calibrate_doctor.py`) and by the doctor's tests, so
both measure the same edits. Everything here is made offline from what the machine already has:
the copies from the photos themselves, the off-domain images from scikit-learn's two bundled
sample photos (a temple in China, a flower), matplotlib's bundled portrait of Grace Hopper, and
rendered pages of text and a chart.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

# name -> edit of an RGB PIL image, returning (encoded bytes, file suffix). The kinds of copy
# that end up on both sides of a split: re-saved JPEGs, resized PNGs (the case md5 misses),
# small crops, and all of them at once.
EDITS: dict[str, Callable[[Any], tuple[bytes, str]]] = {}


def _edit(name: str):
    def register(fn):
        EDITS[name] = fn
        return fn
    return register


def _encode(img: Any, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _scale(img: Any, s: float) -> Any:
    from PIL import Image

    w, h = img.size
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)


def _crop(img: Any, keep: float, dx: float = 0.5, dy: float = 0.5) -> Any:
    w, h = img.size
    cw, ch = round(w * keep), round(h * keep)
    x0, y0 = round((w - cw) * dx), round((h - ch) * dy)
    return img.crop((x0, y0, x0 + cw, y0 + ch))


@_edit("jpeg_q40")
def _jpeg40(img):
    return _encode(img, "JPEG", quality=40), ".jpg"


@_edit("jpeg_q75")
def _jpeg75(img):
    return _encode(img, "JPEG", quality=75), ".jpg"


@_edit("png_half")
def _png_half(img):
    return _encode(_scale(img, 0.5), "PNG"), ".png"


@_edit("png_max300")
def _png_300(img):
    return _encode(_scale(img, 300 / max(img.size)), "PNG"), ".png"


@_edit("crop90")
def _crop90(img):
    return _encode(_crop(img, 0.90), "JPEG", quality=90), ".jpg"


@_edit("crop90_corner")
def _crop90_corner(img):
    return _encode(_crop(img, 0.90, 0.0, 0.0), "JPEG", quality=90), ".jpg"


@_edit("crop80_corner")
def _crop80_corner(img):
    return _encode(_crop(img, 0.80, 1.0, 0.0), "JPEG", quality=90), ".jpg"


@_edit("all")
def _all(img):
    return _encode(_scale(_crop(img, 0.9, 0.3, 0.6), 0.6), "JPEG", quality=60), ".jpg"


# The edits a copy "of the same photo" is expected to survive: one re-encoding, resize or crop
# of up to a tenth of each side. crop80_corner (a fifth cut off two sides) and all (crop, resize
# and JPEG q60 at once) are measured too, beyond that promise.
SMALL_EDITS = tuple(e for e in EDITS if e not in ("crop80_corner", "all"))


def apply(edit: str, data: bytes) -> tuple[bytes, str]:
    """One of `EDITS` applied to an encoded image: (new encoded bytes, suffix)."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        img = ImageOps.exif_transpose(im).convert("RGB")
    return EDITS[edit](img)


def off_domain_images(size: int = 480) -> dict[str, bytes]:
    """Real non-pet pictures, offline: two scenery photos, a portrait, a text page, a chart (JPEG)."""
    from PIL import Image, ImageDraw

    out: dict[str, bytes] = {}
    try:
        from sklearn.datasets import load_sample_images

        for name, arr in zip(("temple", "flower"), load_sample_images().images):
            out[name] = _encode(Image.fromarray(arr), "JPEG", quality=90)
    except (ImportError, OSError):
        pass
    try:
        import matplotlib.cbook as cbook

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            out["portrait"] = f.read()
    except (ImportError, OSError, ValueError):
        pass
    page = Image.new("RGB", (size, round(size * 1.3)), "white")
    draw = ImageDraw.Draw(page)
    rng = np.random.default_rng(0)
    words = "invoice total amount due payment terms net thirty days account number reference".split()
    for line in range(28):
        text = " ".join(rng.choice(words, size=7))
        draw.text((24, 20 + line * 21), text, fill=(20, 20, 20))
    out["document"] = _encode(page, "JPEG", quality=90)
    out["chart"] = _chart(size)
    return out


def _chart(size: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(size / 100, size / 100), dpi=100)
    x = np.linspace(0, 10, 50)
    ax.plot(x, np.sin(x), label="sin")
    ax.bar(np.arange(10), np.arange(10) % 4, alpha=0.5)
    ax.set_title("quarterly figures")
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="jpeg")
    plt.close(fig)
    return buf.getvalue()


def swap_labels(labels: np.ndarray, share: float, num_classes: int, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Give `share` of the images another class, uniformly at random: (new labels, swapped rows)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels).copy()
    rows = np.sort(rng.choice(len(labels), size=max(1, round(share * len(labels))), replace=False))
    shift = rng.integers(1, num_classes, size=len(rows))
    labels[rows] = (labels[rows] + shift) % num_classes
    return labels, rows


def embed(sources: Sequence[bytes | Path], backbone_name: str, cache_dir: str | Path,
          batch_size: int = 32) -> np.ndarray:
    """(N, D) features of encoded images with a registered backbone, as the features stage computes them."""
    from pipeline.featurize import BatchEmbedder, decoded_views, default_workers
    from pipeline.models import registry

    backbone = registry.load_backbone(backbone_name, cache_dir)
    embedder = BatchEmbedder(backbone, batch_size)
    names = [f"image {i}" for i in range(len(sources))]
    stream = decoded_views(sources, names, backbone.spec, ("center",), False, default_workers(),
                           depth=2 * batch_size)
    try:
        return embedder.embed(stream, len(sources))
    finally:
        stream.close()
