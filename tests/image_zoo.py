"""A folder of odd and broken image files, written on the fly (nothing binary in the repo).

`write_zoo(folder)` writes good-but-odd images (CMYK, alpha, EXIF-rotated, 16-bit, GIF, WebP,
BMP, 60x60, optionally 5000x4000) and broken ones (empty, truncated, text named .jpg, zero-size
header, decompression-bomb header). `GOOD` and `BROKEN` say what a reader must make of each.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 160, 0), (255, 255, 255)

# name -> kind of ImageDecodeError it must raise.
BROKEN = {
    "empty.jpg": "empty",
    "truncated.jpg": "truncated",
    "text_named.jpg": "not_an_image",
    "zero_size.png": "zero_size",
    "bomb.png": "too_large",
}

# name -> (displayed width, height) after EXIF orientation.
GOOD = {
    "rgb.png": (90, 70),
    "alpha.png": (80, 80),
    "palette_alpha.png": (64, 64),
    "cmyk.jpg": (96, 64),
    "gray.jpg": (70, 90),
    "gray16.png": (64, 64),
    "exif_rotated.jpg": (80, 120),   # stored 120x80 with orientation 6 (rotate 90 CW to view)
    "tiny.png": (60, 60),
    "animated.gif": (64, 48),
    "photo.webp": (100, 75),
    "image.bmp": (75, 100),
}
BIG = {"big.jpg": (5000, 4000)}


def png_header(width: int, height: int) -> bytes:
    """A PNG with a valid IHDR for any size and no pixel data (PIL reads the size, then fails)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def textured(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth gradient with noise: photo-like for JPEG, distinct at every pixel."""
    rng = np.random.default_rng(seed)
    a = np.empty((height, width, 3), np.int16)
    a[..., 0] = np.linspace(0, 255, width, dtype=np.float32).astype(np.int16)[None, :]
    a[..., 1] = np.linspace(0, 255, height, dtype=np.float32).astype(np.int16)[:, None]
    a[..., 2] = 128
    a += rng.integers(-20, 21, size=(height, width, 1), dtype=np.int16)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def halves(width: int, height: int, first, second, vertical_split: bool = True) -> Image.Image:
    """Two flat colours: left/right halves (vertical split) or top/bottom."""
    a = np.zeros((height, width, 3), np.uint8)
    if vertical_split:
        a[:, : width // 2], a[:, width // 2:] = first, second
    else:
        a[: height // 2], a[height // 2:] = first, second
    return Image.fromarray(a)


def write_zoo(folder: Path, big: bool = False) -> dict[str, Path]:
    """Write the zoo into `folder`; return name -> path. `big` adds the 5000x4000 JPEG."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}

    def put(name: str, data: bytes) -> None:
        (folder / name).write_bytes(data)
        out[name] = folder / name

    # --- broken ---
    put("empty.jpg", b"")
    whole = _jpeg_bytes(textured(200, 150))
    put("truncated.jpg", whole[: len(whole) // 2])
    put("text_named.jpg", b"This is a text file, not a JPEG.\n" * 4)
    put("zero_size.png", png_header(0, 40))
    put("bomb.png", png_header(30000, 30000))  # 900 Mpixel header, no pixels

    # --- good but odd ---
    buf = io.BytesIO(); textured(90, 70).save(buf, "PNG"); put("rgb.png", buf.getvalue())
    # Left half fully transparent red (must become white), right half opaque blue.
    rgba = np.zeros((80, 80, 4), np.uint8)
    rgba[:, :40] = (255, 0, 0, 0)
    rgba[:, 40:] = (0, 0, 255, 255)
    buf = io.BytesIO(); Image.fromarray(rgba, "RGBA").save(buf, "PNG"); put("alpha.png", buf.getvalue())
    # Palette with a transparent index: top half transparent (white), bottom half green.
    pal = Image.new("P", (64, 64), 0)
    pal.putpalette([0, 0, 0, *GREEN] + [0] * (256 * 3 - 6))
    pal.paste(1, (0, 32, 64, 64))
    buf = io.BytesIO(); pal.save(buf, "PNG", transparency=0); put("palette_alpha.png", buf.getvalue())
    # CMYK red: C=0 M=255 Y=255 K=0. PIL writes Adobe's inverted CMYK and reads it back.
    put("cmyk.jpg", _jpeg_bytes(Image.new("CMYK", (96, 64), (0, 255, 255, 0))))
    put("gray.jpg", _jpeg_bytes(textured(70, 90).convert("L")))
    g16 = np.full((64, 64), 32896, np.uint16)  # 32896 / 257 = 128 exactly
    buf = io.BytesIO(); Image.fromarray(g16).save(buf, "PNG"); put("gray16.png", buf.getvalue())
    # Stored 120x80 with red left, blue right; orientation 6 means "rotate 90 degrees clockwise
    # to view", so the viewer sees 80x120 with red on top and blue below.
    exif = Image.Exif()
    exif[0x0112] = 6
    put("exif_rotated.jpg", _jpeg_bytes(halves(120, 80, RED, BLUE), exif=exif.tobytes()))
    buf = io.BytesIO(); textured(60, 60, seed=1).save(buf, "PNG"); put("tiny.png", buf.getvalue())
    frames = [Image.new("RGB", (64, 48), GREEN), Image.new("RGB", (64, 48), RED)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100)
    put("animated.gif", buf.getvalue())
    buf = io.BytesIO(); textured(100, 75, seed=2).save(buf, "WEBP", quality=90); put("photo.webp", buf.getvalue())
    buf = io.BytesIO(); textured(75, 100, seed=3).save(buf, "BMP"); put("image.bmp", buf.getvalue())
    if big:
        put("big.jpg", _jpeg_bytes(textured(5000, 4000, seed=4)))
    return out
