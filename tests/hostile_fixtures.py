"""A photo folder whose class and file names are hostile: HTML, a script opener, quotes,
newlines, terminal escapes, spreadsheet formulas, line separators and bytes that are not UTF-8.

The photos are real (cats-vs-dogs), so the pipeline trains on them as usual; only the names are
built to break whatever prints or embeds them without escaping.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cats-dogs-dev"

#: Class folders (a ``/`` nests folders: the class name keeps it, so ``</script>`` fits).
CLASSES = {
    '<img src=x onerror=alert(1)> "cats"': ("cat", 0),
    "=2+5 dogs \x1b[31mred\x1b[0m": ("dog", 0),
    "evil<!--<script>/</script>alert(3)": ("cat", 10),
}

#: File names (str; the last one is bytes that are not UTF-8).
FILES = [
    "a<!--<script>alert(2)<img src=x onerror=alert(2)>.jpg",
    "=1+1'\".jpg",
    "+SUM(A1).jpg",
    "-2.jpg",
    "@cmd.jpg",
    "new\nline.jpg",
    "\x1b[2J\x1b[31mred.jpg",
    "sep\u2028and\u2029.jpg",
    "[link](javascript:alert(4)).jpg",
    "&amp;&lt;b&gt;.jpg",
]
BAD_BYTES = b"bytes-\xff\xfe.jpg"
PER_CLASS = len(FILES) + 1


def make_hostile_folder(root: Path) -> Path:
    """Create the folder under `root` (``root/photos``) and return it; one symlink loop inside."""
    base = Path(root) / "photos"
    for cls, (animal, start) in CLASSES.items():
        folder = base / cls
        folder.mkdir(parents=True)
        photos = sorted((PHOTOS / animal).iterdir())[start:start + PER_CLASS]
        for name, src in zip(FILES, photos):
            shutil.copyfile(src, folder / name)
        shutil.copyfile(photos[len(FILES)], os.fsencode(folder) + b"/" + BAD_BYTES)
    loop = base / next(iter(CLASSES)) / "loop.jpg"
    os.symlink(loop, loop)        # a link to itself: listed as skipped, never a crash
    return base


def hostile_strings() -> list[str]:
    """Every class and file name, as the pipeline sees it (os.fsdecode for the bytes one)."""
    return [*CLASSES, *FILES, os.fsdecode(BAD_BYTES)]
