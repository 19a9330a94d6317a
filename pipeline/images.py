"""Robust image decoding (PIL, no jax); the backbone's resize and crop are `pipeline.resize`.

Every image the pipeline reads goes through `decode_image`: one place that turns "bytes from a
folder or a tfds record" into an RGB PIL image the same way everywhere, or raises
`ImageDecodeError` with a short `kind` and a readable reason.

Decisions (the reasons are next to the code):
- EXIF orientation is applied (`ImageOps.exif_transpose`), so a phone photo stored sideways is
  seen upright, as every photo viewer shows it.
- Transparency is composited on white, not dropped: the colour under fully transparent pixels is
  arbitrary (often black or garbage), and cut-out photos and icons are drawn to be seen on white.
- CMYK (including Adobe's inverted CMYK JPEGs, which PIL undoes) is converted with PIL's formula.
- 16-bit images are scaled to 8 bits (value / 257), not clipped: PIL's own ``I;16 -> L``
  conversion clips, which would make most 16-bit photos white.
- GIF, WebP and other multi-frame formats: the first frame.
- A truncated file is an error, never half-read: PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` must
  stay False (its default), and `decode_image` refuses to run if someone set it.
- Large JPEGs are decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling (`Image.draft`) when
  the result keeps the shorter side at least ``DRAFT_MARGIN`` times the size the caller needs;
  the final resize then still shrinks by 2x or more with PIL's antialiasing filter, which keeps
  the result within about one grey level of a full-size decode (see tests/test_images.py)
  at a fraction of the decode time.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from typing import Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Types of pixel data a decoded image may come in; all end up as RGB uint8.
_ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")

#: A draft (reduced-size JPEG decode) keeps the shorter side >= DRAFT_MARGIN x the needed size.
DRAFT_MARGIN = 2

#: Images with more pixels than this are refused as decompression bombs (PIL's own limit).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# `decode_image` refuses an image over MAX_PIXELS itself, with a reason the data stage lists;
# PIL's own warning for such an image would only reach the user's terminal as noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

Source = Union[bytes, str, os.PathLike]


class ImageDecodeError(Exception):
    """An image that cannot be used; the data stage skips it and lists it with its reason.

    Attributes:
      path: the file (or tfds id) the bytes came from.
      kind: a short category: ``empty``, ``truncated``, ``not_an_image``, ``zero_size``,
        ``too_large``, ``unreadable``, ``unsupported_mode`` or ``corrupt``.
      reason: one readable sentence.
    """

    def __init__(self, path: str, reason: str, kind: str = "corrupt"):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
        self.kind = kind


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a local file into memory, mapping I/O errors to ImageDecodeError."""
    text = os.fspath(path)
    try:
        with open(text, "rb") as f:
            return f.read()
    except OSError as e:
        raise ImageDecodeError(text, f"cannot read the file ({e.strerror or e})", "unreadable") from None


def decode_image(source: Source, *, name: str | None = None, min_size: int | None = None,
                 max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image to an upright RGB PIL image.

    Args:
      source: encoded bytes, or a path to read them from.
      name: how to name the image in errors (defaults to the path, or ``<bytes>``).
      min_size: the smallest shorter side the caller needs after decoding (the resize target).
        Large JPEGs are then decoded at reduced scale (see module docstring). None decodes at
        full size.
      max_pixels: refuse images with more pixels than this (decompression bombs).

    Returns:
      A loaded PIL image in mode ``RGB``, EXIF orientation applied, transparency on white.

    Raises:
      ImageDecodeError: empty, truncated, not an image, zero-size, too large, or corrupt.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone flipped PIL's global: truncated files would be half-read as grey blocks and
        # silently enter the dataset. Refuse rather than produce wrong features.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; the pipeline needs it False "
                           "so that truncated images are skipped instead of half-read.")
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = name or "<bytes>"
    else:
        name = name or os.fspath(source)
        data = read_bytes(source)
    if not data:
        raise ImageDecodeError(name, "the file is empty (0 bytes)", "empty")
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise _unidentified(name, data) from None
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(name, f"too many pixels, refused as a decompression bomb ({e})", "too_large") from None
    except Exception as e:  # PIL raises SyntaxError, ValueError, struct.error... on bad headers
        raise ImageDecodeError(name, f"corrupt header ({type(e).__name__}: {e})", "corrupt") from None
    return _load_rgb(im, name, min_size, max_pixels)


def _load_rgb(im: Image.Image, name: str, min_size: int | None, max_pixels: int) -> Image.Image:
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(name, f"the image has zero size ({w}x{h})", "zero_size")
    if w * h > max_pixels:
        raise ImageDecodeError(
            name, f"{w}x{h} = {w * h} pixels is more than the {max_pixels} allowed "
            "(refused as a possible decompression bomb)", "too_large")
    if min_size and im.format == "JPEG":
        _draft(im, min_size)
    try:
        im.load()
    except OSError as e:
        msg = str(e)
        if "truncated" in msg or "broken data stream" in msg or "premature" in msg.lower():
            raise ImageDecodeError(name, f"truncated file ({msg})", "truncated") from None
        raise ImageDecodeError(name, f"cannot decode ({msg})", "corrupt") from None
    except Exception as e:
        raise ImageDecodeError(name, f"cannot decode ({type(e).__name__}: {e})", "corrupt") from None
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception:  # a malformed EXIF block is not worth losing the photo over
        pass
    try:
        return to_rgb(im)
    except (ValueError, OSError) as e:
        raise ImageDecodeError(name, f"pixel mode {im.mode} cannot be converted to RGB ({e})",
                               "unsupported_mode") from None


def _draft(im: Image.Image, min_size: int) -> None:
    """Ask libjpeg to decode at 1/s scale, the largest s in {2, 4, 8} that keeps the margin."""
    need = DRAFT_MARGIN * min_size
    short = min(im.size)
    scale = next((s for s in (8, 4, 2) if short // s >= need), 1)
    if scale > 1:
        # draft() picks the largest power-of-two scale with size // request >= scale.
        im.draft(None, (im.size[0] // scale, im.size[1] // scale))


def to_rgb(im: Image.Image) -> Image.Image:
    """`im` in mode RGB: high-bit images scaled to 8 bits, transparency composited on white."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in _HIGH_BIT_MODES:
        return Image.fromarray(_high_bit_to_uint8(im), "L").convert("RGB")
    if mode in _ALPHA_MODES or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def _high_bit_to_uint8(im: Image.Image) -> np.ndarray:
    a = np.asarray(im)
    if im.mode == "F":
        # Float images: [0, 1] is the common convention; anything larger is taken as 0..255.
        a = a.astype(np.float64) * (255.0 if a.size and np.nanmax(a) <= 1.0 else 1.0)
    elif im.mode.startswith("I;16") or (a.size and a.max() > 255):
        a = a.astype(np.float64) / 257.0  # 65535 -> 255
    return np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8)


_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"),
               (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _unidentified(name: str, data: bytes) -> ImageDecodeError:
    """Why PIL could not open `data`: an image format with a bad header, or not an image."""
    fmt = next((f for sig, f in _SIGNATURES if data.startswith(sig)), None)
    if fmt is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        fmt = "WebP"
    if fmt is None:
        try:
            text = data[:64].decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if text and all(c.isprintable() or c in "\r\n\t" for c in text):
            what = f"it starts with the text {text[:24]!r}"
        else:
            what = f"unknown signature {data[:8].hex()}"
        return ImageDecodeError(name, f"not an image PIL can read ({what})", "not_an_image")
    size = _header_size(data, fmt)
    if size is not None and 0 in size:
        return ImageDecodeError(name, f"the {fmt} header says the image is {size[0]}x{size[1]} pixels",
                                "zero_size")
    return ImageDecodeError(name, f"a {fmt} file whose header PIL cannot read", "corrupt")


def _header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) as written in a PNG, GIF or JPEG header, without decoding; else None."""
    if fmt == "PNG" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if fmt == "GIF" and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if fmt == "JPEG":
        i = 2
        while i + 9 <= len(data) and data[i] == 0xFF:
            marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return w, h
            i += 2 + length
    return None
