"""What the report's section builders share: the report's knobs, number formats, image assets."""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.report.document import ASSET_DIR, Asset

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Options:
    """The knobs of the report (a plain copy of the report params section)."""

    title: str = "Transfer-learning run"
    primary_head: str = "auto"
    split: str = "test"
    max_mistakes: int = 24
    max_ideal: int = 48
    max_adversarial: int = 12
    thumbnail_size: int = 160
    dpi: int = 100


# --- formatting ----------------------------------------------------------------------------------

def pct(v: Any, digits: int = 1) -> str:
    return "–" if not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.{digits}f}%"


def num(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    return str(v)


def value(v: Any) -> str:
    """A param value as YAML would show it (lists in brackets, strings bare)."""
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, dict):  # a sub-section in a list (ideal.compare): its set fields only
        return "{" + ", ".join(f"{k}: {value(x)}" for k, x in v.items() if x is not None) + "}"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return num(v) if isinstance(v, (int, float)) else str(v)


def seconds(s: Any) -> str:
    if not isinstance(s, (int, float)):
        return "–"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(s, 60)
    return f"{int(m)} min {sec:.0f} s" if m < 60 else f"{int(m // 60)} h {int(m % 60)} min"


# --- images --------------------------------------------------------------------------------------

def thumbnail(path: Path | bytes, size: int, name: str) -> Asset | None:
    """A square, centre-cropped JPEG thumbnail of a photo file or encoded bytes (EXIF rotation
    applied), or None when it cannot be decoded."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            im = ImageOps.fit(im, (size, size), method=Image.Resampling.BICUBIC)
    except (OSError, ValueError):
        return None
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return Asset(f"{ASSET_DIR}/{name}.jpg", buf.getvalue())


def file_asset(path: Path, name: str) -> Asset:
    """A stage's image file, copied as is (plots, whose flat colours PNG keeps small and sharp)."""
    return Asset(f"{ASSET_DIR}/{name}{Path(path).suffix.lower()}", Path(path).read_bytes())


PHOTO_QUALITY = 85  # JPEG quality of photo-like report images: no visible loss at the size shown


def photo_asset(path: Path, name: str, max_width: int | None = None) -> Asset:
    """A stage's photo-like image (a photo, an ideal image, a perturbation, a heat map) as a JPEG,
    at most `max_width` pixels wide (the width it is shown at, about twice its CSS width for
    sharp screens). The stage keeps its lossless PNG; the page only has to look the same: the
    PNGs of 8-bit noise or amplified perturbations are 5-10x larger than JPEGs no one can tell
    apart at that size. The file is copied as is when that is smaller, or when it cannot be decoded.
    """
    from PIL import Image

    raw = Path(path).read_bytes()
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im = im.convert("RGB")
            if max_width and im.width > max_width:
                im = im.resize((max_width, max(1, round(im.height * max_width / im.width))), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=PHOTO_QUALITY, optimize=True)
    except (OSError, ValueError):
        return file_asset(path, name)
    if len(buf.getvalue()) >= len(raw):
        return file_asset(path, name)
    return Asset(f"{ASSET_DIR}/{name}.jpg", buf.getvalue())


def plot_text(name: Any) -> str:
    """A name from the data as plain matplotlib text: ``$`` would start mathtext, and a control
    character a warning carrying a raw terminal escape to stderr; both are shown escaped."""
    from pipeline.errors import terminal_safe

    return terminal_safe(str(name)).replace("$", "\\$")


def safe_name(text: str) -> str:
    """A string made safe for a file name (letters, digits, - and _)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(text))[:80]


def top_k_text(pairs: Sequence[tuple[str, float]]) -> str | None:
    """(class, probability) pairs as one line (``tabby 62%, tiger cat 20%``), or None when empty."""
    return ", ".join(f"{name} {pct(p, 0)}" for name, p in pairs) or None

