"""Photos to predict: files, folders (recursively) and globs; decoding in threads, bad files kept aside.

Folders are walked the way the data stage walks an image folder (`pipeline.sources.walk_files`,
hidden files skipped, files with an image suffix taken); a file named on the command line is
always tried, whatever its suffix, so that a photo saved as ``.jfif`` is not silently ignored.
Every image goes through `pipeline.images.decode_image` and the backbone's own resize and crop
(`pipeline.resize.views`), exactly as the features stage prepared the training photos.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import errno
import glob
import os
import stat
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from pipeline import images, resize
from pipeline.sources import IMAGE_SUFFIXES, walk_files

_GLOB_CHARS = set("*?[")


@dataclasses.dataclass(frozen=True)
class BadFile:
    """A path that was not predicted, and why (``kind`` as in `images.ImageDecodeError`)."""

    file: str
    kind: str
    reason: str


def expand(paths: Sequence[str]) -> tuple[list[Path], list[BadFile]]:
    """Paths, folders and globs to the image files they name, in a stable order.

    Args:
      paths: command-line arguments: a file, a folder (walked recursively; only files with an
        image suffix), or a glob (``photos/**/*.jpg``; ``**`` recurses).

    Returns:
      (files, missing): the files, each once, in argument order (sorted within a folder or glob),
      and the arguments that matched nothing.
    """
    files: list[Path] = []
    missing: list[BadFile] = []
    seen: set[str] = set()

    def add(p: Path) -> None:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            files.append(p)

    for arg in paths:
        p = Path(arg).expanduser()
        try:
            is_dir = stat.S_ISDIR(os.stat(p).st_mode)
        except FileNotFoundError:
            is_dir = False
        except OSError as e:
            # It is there but cannot be used: say why, never "missing".
            kind = "symlink_loop" if e.errno == errno.ELOOP else "unreadable"
            reason = ("a symbolic link loop (the link leads back to itself)" if kind == "symlink_loop"
                      else f"cannot be read: {e.strerror or type(e).__name__}")
            missing.append(BadFile(arg, kind, reason))
            continue
        if is_dir:
            unreadable: list[tuple[str, str, str]] = []
            try:
                listed = list(walk_files(p, unreadable))
            except OSError as e:
                missing.append(BadFile(arg, "unreadable", f"cannot be read: {e.strerror or type(e).__name__}"))
                continue
            missing.extend(BadFile(str(p / rel), kind, reason) for rel, kind, reason in unreadable)
            found = [p / rel for rel, _ in listed if Path(rel).suffix.lower() in IMAGE_SUFFIXES]
            if not found and not unreadable:
                missing.append(BadFile(arg, "no_images", f"the folder holds no file ending in "
                                                         f"{', '.join(IMAGE_SUFFIXES)}"))
            for f in found:
                add(f)
        elif p.exists() or p.is_symlink():
            add(p)   # a dangling link is tried, and reported by the decoder
        elif _GLOB_CHARS & set(arg):
            hits = sorted(glob.glob(os.path.expanduser(arg), recursive=True))
            hits = [Path(h) for h in hits if Path(h).is_file()]
            if not hits:
                missing.append(BadFile(arg, "no_match", "the pattern matches no file"))
            for h in hits:
                add(h)
        else:
            missing.append(BadFile(arg, "missing", "no such file or folder"))
    return files, missing


def decoded(files: Sequence[Path], spec: Any, crops: Sequence[str], flip: bool, workers: int,
            depth: int = 64) -> Iterator[tuple[Path, np.ndarray | BadFile]]:
    """Decode, resize and crop `files` in parallel threads, in input order.

    Args:
      files: image paths.
      spec: the backbone's `BackboneSpec` (resize size and filter, crop size).
      crops, flip: the views the features stage took (see `pipeline.features.params.view_plan`).
      workers: decoding threads.
      depth: how many images may be decoded ahead of the consumer.

    Yields:
      (path, uint8 (V, S, S, 3) views) or (path, `BadFile`) for a file that cannot be decoded.
    """
    need = max(spec.resize_size, spec.input_size)

    def work(path: Path) -> np.ndarray | BadFile:
        try:
            img = images.decode_image(path, min_size=need)
        except images.ImageDecodeError as e:
            return BadFile(str(path), e.kind, e.reason)
        return resize.views(img, spec, crops, flip)

    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        pending: collections.deque = collections.deque()
        for path in files:
            pending.append((path, pool.submit(work, path)))
            if len(pending) >= depth:
                p, fut = pending.popleft()
                yield p, fut.result()
        while pending:
            p, fut = pending.popleft()
            yield p, fut.result()
