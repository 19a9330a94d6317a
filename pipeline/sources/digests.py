"""Content fingerprints of folder sources, with a stat cache so that only changed files are read.

The data stage's cache key follows the photos' bytes, not their timestamps: ``touch`` on a photo,
a fresh ``git clone`` or a copy that keeps the bytes reruns nothing. Reading every byte on every
``status`` would be slow on big folders, so each file's sha1 is remembered with the (size,
mtime_ns) it had when it was hashed; a file is read again only when its stat changes. The memo
lives under the cache's local folder (``<cache>/data/digests/``): it is only a cache, deleting it
costs one re-read.

Standard library only: this runs while deciding what is up to date.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
from pathlib import Path

from pipeline.sources.folders import check_folder, walk_files
from pipeline.errors import UserError

MEMO_VERSION = 1


def file_sha1(path: Path) -> str:
    """sha1 of a file's bytes (hashlib reads it in blocks)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def _memo_path(memo_dir: Path, root: Path) -> Path:
    tag = hashlib.sha1(os.fsencode(root.resolve())).hexdigest()[:16]
    return memo_dir / f"{tag}.json"


def _read_memo(path: Path, root: Path) -> dict[str, list]:
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if memo.get("version") != MEMO_VERSION or memo.get("root") != str(root.resolve()):
        return {}
    return memo.get("files", {})


def _write_memo(path: Path, root: Path, files: dict[str, list]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": MEMO_VERSION, "root": str(root.resolve()), "files": files}))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs re-reading next time


def folder_digests(root: Path, memo_dir: Path | None) -> dict[str, str]:
    """Every visible file under `root` -> sha1 of its bytes (relative posix path keys, sorted).

    Args:
      root: the folder.
      memo_dir: where the stat memo lives; None reads every file.
    """
    memo_file = _memo_path(memo_dir, root) if memo_dir is not None else None
    memo = _read_memo(memo_file, root) if memo_file else {}
    out: dict[str, str] = {}
    todo: list[tuple[str, int, int]] = []
    for rel, st in walk_files(root):
        hit = memo.get(rel)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            out[rel] = hit[2]
        else:
            todo.append((rel, st.st_size, st.st_mtime_ns))
    if todo:
        def digest(entry: tuple[str, int, int]) -> tuple[str, str]:
            try:
                return entry[0], file_sha1(root / entry[0])
            except OSError as e:  # unreadable: the data stage lists it as skipped
                return entry[0], f"unreadable:{type(e).__name__}"

        # hashlib releases the GIL: threads overlap the reads and the hashing.
        with concurrent.futures.ThreadPoolExecutor(min(8, 2 * (os.cpu_count() or 1))) as pool:
            fresh = dict(pool.map(digest, todo, chunksize=16))
        out.update(fresh)
        keep = {rel: [size, mtime, fresh[rel]] for rel, size, mtime in todo
                if not fresh[rel].startswith("unreadable:")}
        keep.update({rel: memo[rel] for rel in out if rel in memo and rel not in keep})
        if memo_file:
            _write_memo(memo_file, root, keep)
    return dict(sorted(out.items()))


def folder_fingerprint(path: str | os.PathLike | None, memo_dir: Path | None = None) -> str:
    """Fingerprint of a folder source from its files' names and bytes (not their timestamps).

    Adding, removing, renaming or rewriting a photo changes it; ``touch`` does not.

    Args:
      path: the folder (``data.path``).
      memo_dir: folder for the stat memo (see the module docstring); None reads every file.
    """
    try:
        root = check_folder(None if path is None else str(path))
    except UserError:
        return f"folder-missing:{path}"
    h = hashlib.sha256()
    for rel, sha in folder_digests(root, memo_dir).items():
        h.update(os.fsencode(f"{rel}\0{sha}\n"))   # a name that is not UTF-8 keeps its bytes
    return f"folder:{h.hexdigest()[:32]}"
