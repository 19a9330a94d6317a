"""Small JPEG thumbnails of a tfds dataset's photos, kept by the data stage for the report.

Folder photos are files the report can open; tfds photos live inside TFRecords, which the report
(no tensorflow) cannot read. So the data stage, which lists the tfds records anyway, keeps a
thumbnail of each one: ``thumbs.bin`` (JPEGs back to back) and ``thumbs.json`` (id -> [offset,
length]). Shorter side `SHORT_SIDE` px at JPEG quality `QUALITY`: about 5 KB a photo (Oxford-IIIT
Pet: ~35 MB for 7,349 photos), enough for the report's 160 px cards.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

SHORT_SIDE = 128
QUALITY = 80
BIN, INDEX = "thumbs.bin", "thumbs.json"


def make_thumbnail(data: bytes, name: str) -> bytes | None:
    """A JPEG thumbnail (shorter side `SHORT_SIDE`, upright RGB) of an encoded image, or None."""
    from PIL import Image

    from pipeline import images

    try:
        im = images.decode_image(data, name=name, min_size=SHORT_SIDE)
    except images.ImageDecodeError:
        return None
    w, h = im.size
    s = SHORT_SIDE / min(w, h)
    if s < 1:
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=QUALITY)
    return buf.getvalue()


class ThumbnailWriter:
    """Appends thumbnails to ``thumbs.bin`` as they come and writes the index on `close`.

    Nothing but the index is held in memory, so a million-photo dataset costs ~50 MB of index
    and ~5 GB of disk, not memory.
    """

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self._tmp = self.out_dir / (BIN + ".tmp")
        self._f = open(self._tmp, "wb")
        self.index: dict[str, list[int]] = {}
        self._offset = 0

    def add(self, image_id: str, jpeg: bytes | None) -> None:
        """One photo's thumbnail; None (undecodable) is left out."""
        if jpeg is None:
            return
        self._f.write(jpeg)
        self.index[image_id] = [self._offset, len(jpeg)]
        self._offset += len(jpeg)

    def close(self) -> int:
        """Publish ``thumbs.bin`` and ``thumbs.json``; returns how many thumbnails were kept."""
        self._f.close()
        os.replace(self._tmp, self.out_dir / BIN)
        (self.out_dir / INDEX).write_text(json.dumps(self.index, separators=(",", ":")))
        return len(self.index)


class Thumbnails:
    """Reads the thumbnails a data stage kept (empty when it kept none)."""

    def __init__(self, data_dir: Path | None):
        self.path = Path(data_dir) / BIN if data_dir else None
        try:
            self.index = json.loads((Path(data_dir) / INDEX).read_text()) if data_dir else {}
        except (OSError, ValueError):
            self.index = {}

    def get(self, image_id: str) -> bytes | None:
        """The JPEG bytes of one photo's thumbnail, or None."""
        where = self.index.get(image_id)
        if where is None or self.path is None:
            return None
        with open(self.path, "rb") as f:
            f.seek(where[0])
            return f.read(where[1])
