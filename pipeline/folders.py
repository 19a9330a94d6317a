"""Whole folders on a local disk or a ``gs://`` URL: listing, removal, upload and download.

Each operation has a local and a remote branch (see `pipeline.storage` for the paths and single
files): `find` / `list_files` (every file under a folder with its size, in one listing call on
GCS), `list_dirs`, `rmtree`, `upload` / `download` (many files in parallel), and `exchange`, the
atomic swap of two local folders.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Iterable

from pipeline.storage import AnyPath, is_remote, remote, remote_errors


def find(folder: AnyPath) -> list[dict]:
    """Every file under `folder`: ``[{"path": relative, "size": bytes, "mtime": seconds}]``, sorted.

    One listing request per 1000 objects on GCS (no per-file stat). An absent folder is empty.
    """
    out = []
    if not is_remote(folder):
        folder = Path(folder)
        for dirpath, _, filenames in os.walk(folder):
            for fn in filenames:
                p = Path(dirpath) / fn
                st = p.stat()
                out.append({"path": str(p.relative_to(folder)), "size": st.st_size,
                            "mtime": st.st_mtime})
    else:
        fs, base = remote(folder)
        with remote_errors(folder):
            try:
                found = fs.find(base, detail=True)
            except FileNotFoundError:
                found = {}
        prefix = base + "/"
        for name, info in found.items():
            # Skip "folder" placeholder objects some tools create (zero-size, name ends in /).
            if name.startswith(prefix) and not name.endswith("/") and info.get("type", "file") == "file":
                out.append({"path": name[len(prefix):], "size": int(info["size"]),
                            "mtime": _mtime(info)})
    out.sort(key=lambda f: f["path"])
    return out


def _mtime(info: dict) -> float:
    import datetime

    t = info.get("mtime") or info.get("updated")
    if isinstance(t, str):
        t = datetime.datetime.fromisoformat(t.replace("Z", "+00:00"))
    return t.timestamp() if isinstance(t, datetime.datetime) else 0.0


def list_files(folder: AnyPath) -> list[dict]:
    """Every file under `folder` with its size: ``[{"path": relative, "size": bytes}]``, sorted."""
    if not is_remote(folder):
        out = []
        folder = Path(folder)
        for dirpath, _, filenames in os.walk(folder):
            for fn in filenames:
                p = Path(dirpath) / fn
                out.append({"path": str(p.relative_to(folder)), "size": p.stat().st_size})
        out.sort(key=lambda f: f["path"])
        return out
    return [{"path": f["path"], "size": f["size"]} for f in find(folder)]


def list_dirs(folder: AnyPath) -> list[str]:
    """Names of the immediate sub-folders of `folder` (empty when it is absent)."""
    if not is_remote(folder):
        try:
            return sorted(e.name for e in os.scandir(folder) if e.is_dir())
        except FileNotFoundError:
            return []
    fs, base = remote(folder)
    with remote_errors(folder):
        try:
            entries = fs.ls(base, detail=True)
        except FileNotFoundError:
            return []
    return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries
                  if e.get("type") == "directory")


def rmtree(folder: AnyPath) -> None:
    """Delete a folder and everything under it; absent is fine."""
    if not is_remote(folder):
        shutil.rmtree(folder, ignore_errors=True)
        return
    fs, base = remote(folder)
    with remote_errors(folder):
        try:
            fs.rm(base + "/", recursive=True)
        except FileNotFoundError:
            pass


def upload(local_dir: AnyPath, remote_dir: AnyPath, rel_paths: Iterable[str]) -> None:
    """Copy files `local_dir/<rel>` to `remote_dir/<rel>` (in parallel; existing ones replaced)."""
    rel_paths = list(rel_paths)
    if not rel_paths:
        return
    fs, base = remote(remote_dir)
    local_dir = os.fspath(local_dir)
    with remote_errors(remote_dir):
        fs.put([os.path.join(local_dir, r) for r in rel_paths], [f"{base}/{r}" for r in rel_paths])


def download(remote_dir: AnyPath, local_dir: AnyPath, rel_paths: Iterable[str]) -> None:
    """Copy files `remote_dir/<rel>` to `local_dir/<rel>` (in parallel; folders created)."""
    rel_paths = list(rel_paths)
    if not rel_paths:
        return
    fs, base = remote(remote_dir)
    local_dir = Path(local_dir)
    for r in rel_paths:
        (local_dir / r).parent.mkdir(parents=True, exist_ok=True)
    with remote_errors(remote_dir):
        fs.get([f"{base}/{r}" for r in rel_paths], [os.fspath(local_dir / r) for r in rel_paths])


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns:
      True when swapped; False where the OS or file system cannot (then nothing changed, and
      the caller falls back to two renames).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EXDEV, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))
