"""Class folders on disk: walk, scan, and fingerprint a folder source.

Folder layouts (documented in the README):
- one sub-folder per class: ``root/<class>/.../*.jpg``; or
- split folders: ``root/train/<class>/...``, ``root/val/<class>/...`` (``validation`` is read as
  ``val``), ``root/test/<class>/...``; the splits present are used as given, missing ones are
  carved from train.
- A class is the path of the folder that directly holds the images, relative to the root (or to
  the split folder): nested ``dogs/beagle/x.jpg`` is class ``dogs/beagle``, not ``beagle``, so
  two leaves with the same name under different parents (``cats/mixed``, ``dogs/mixed``) stay
  two classes. Images lying directly in the root are not in any class and are listed as skipped.
- Hidden files and folders (name starting with ``.``) and ``__MACOSX`` are ignored; files whose
  suffix is not an image suffix (``Thumbs.db``, ``notes.txt``) are listed as skipped.

Standard library only: fingerprints run while deciding what is up to date.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from pathlib import Path
from typing import Iterator

from pipeline.errors import UserError

#: File name suffixes read as images from folders (lower case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
_IGNORED_NAMES = {"__MACOSX"}

def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in _IGNORED_NAMES


def walk_files(root: Path, skipped: list[tuple[str, str, str]] | None = None
               ) -> Iterator[tuple[str, os.stat_result]]:
    """Every visible file under `root`, as (posix path relative to root, stat), sorted.

    Symlinked folders are followed once (a link back up the tree is not followed again). An
    entry that cannot be read (a symlink loop, a broken link, a folder without permission) is
    left out, and when `skipped` is given it is appended there as (path, kind, reason).
    """
    seen: set[str] = set()
    out: list[tuple[str, os.stat_result]] = []

    def skip(rel: str, e: OSError) -> None:
        if skipped is not None:
            kind = {errno.ELOOP: "symlink_loop", errno.ENOENT: "broken_link",
                    errno.EACCES: "unreadable", errno.EPERM: "unreadable"}.get(e.errno, "unreadable")
            reason = ("a symbolic link loop (the link leads back to itself)" if kind == "symlink_loop"
                      else "a symbolic link to nothing" if kind == "broken_link"
                      else f"cannot be read: {e.strerror or type(e).__name__}")
            skipped.append((rel, kind, reason))

    def visit(folder: Path, rel: str) -> None:
        real = os.path.realpath(folder)
        if real in seen:
            return
        seen.add(real)
        try:
            with os.scandir(folder) as it:
                entries = sorted((e for e in it if _visible(e.name)), key=lambda e: e.name)
        except OSError as e:
            if not rel:
                raise   # the root itself: the caller names it
            skip(rel.rstrip("/"), e)
            return
        for e in entries:
            child = f"{rel}{e.name}"
            try:
                st = e.stat(follow_symlinks=True)
            except OSError as err:
                # A dangling link is no file at all; anything else unreadable is reported.
                skip(child, err)
                continue
            if stat.S_ISDIR(st.st_mode):
                visit(Path(e.path), child + "/")
            elif stat.S_ISREG(st.st_mode):
                out.append((child, st))

    visit(Path(root), "")
    return iter(sorted(out, key=lambda t: t[0]))


def check_folder(path: str | None) -> Path:
    """The folder source's root, or a UserError naming ``data.path`` and the fix."""
    if not path:
        raise UserError("data.path: data.source is 'folder' but data.path is not set; pass "
                        "-S data.path=FOLDER (one sub-folder per class).")
    if str(path).startswith("gs://"):
        raise UserError(f"data.path: {path} is on GCS; a folder source must be a local folder. Copy "
                        "it locally (gsutil -m cp -r), or prepare it as a tfds dataset and set "
                        "data.source=tfds with data.data_dir on GCS.")
    root = Path(path).expanduser()
    if not root.is_dir():
        why = ("a symbolic link loop" if root.is_symlink() and not root.exists() else
               f"resolved to {os.path.realpath(root)}")
        raise UserError(f"data.path: {path} is not a folder ({why}). Pass "
                        "-S data.path=FOLDER holding one sub-folder per class, or train/ val/ test/ "
                        "sub-folders each holding one sub-folder per class.")
    return root


def _is_dir(e: os.DirEntry) -> bool:
    try:
        return e.is_dir()
    except OSError:
        return False   # a loop or an unreadable link: `walk_files` reports it


@dataclasses.dataclass
class FolderScan:
    """What a folder holds.

    Attributes:
      layout: ``classes`` (one sub-folder per class) or ``splits`` (train/ val/ test/).
      files: split name (or None for the ``classes`` layout) -> list of (id, class name, size,
        mtime_ns); id is the posix path relative to the root.
      ignored: (id, kind, reason) for files that cannot be in any class.
    """

    layout: str
    files: dict[str | None, list[tuple[str, str, int, int]]]
    ignored: list[tuple[str, str, str]]


def scan_folder(root: Path) -> FolderScan:
    """List a folder source's images and classes (stat only; nothing is decoded here)."""
    top = sorted(e.name for e in os.scandir(root) if _visible(e.name) and _is_dir(e))
    split_dirs = [d for d in top if d.lower() in SPLIT_ALIASES]
    layout = "classes"
    if any(SPLIT_ALIASES[d.lower()] == "train" for d in split_dirs):
        others = [d for d in top if d not in split_dirs]
        if others:
            raise UserError(
                f"data.path: {root} mixes split folders ({', '.join(split_dirs)}) with other "
                f"folders ({', '.join(others[:5])}). Use either train/ val/ test/ each holding "
                "class folders, or class folders only.")
        names = [SPLIT_ALIASES[d.lower()] for d in split_dirs]
        if len(set(names)) != len(names):
            raise UserError(f"data.path: {root} has two folders for the same split "
                            f"({', '.join(split_dirs)}); keep one of val/ and validation/.")
        layout = "splits"
    files: dict[str | None, list[tuple[str, str, int, int]]] = {}
    ignored: list[tuple[str, str, str]] = []
    for rel, st in walk_files(root, ignored):
        parts = rel.split("/")
        split = None
        if layout == "splits":
            if parts[0] not in split_dirs:
                ignored.append((rel, "no_class", "a file outside the split folders"))
                continue
            split = SPLIT_ALIASES[parts[0].lower()]
            parts = parts[1:]
        if len(parts) < 2:
            ignored.append((rel, "no_class", "not inside a class folder"))
            continue
        if os.path.splitext(parts[-1])[1].lower() not in IMAGE_SUFFIXES:
            ignored.append((rel, "not_an_image_name",
                            f"suffix is not one of {', '.join(IMAGE_SUFFIXES)}"))
            continue
        files.setdefault(split, []).append((rel, "/".join(parts[:-1]), st.st_size, st.st_mtime_ns))
    return FolderScan(layout, files, ignored)


