"""Publishing cache outputs: the partial folder, the atomic rename, the verified upload and copy.

An output is complete exactly when its manifest exists (`pipeline.cache`). On a local disk the
manifest is written inside the partial folder, then the folder is renamed into place (atomic). On
GCS a rename is a copy per object, so there the output is uploaded straight to ``<key>/`` and the
manifest is uploaded LAST, after a listing confirmed every file arrived with its size: a reader on
any host sees either no manifest (not complete) or the whole output.

Stages only ever see local folders. With a remote root each host keeps a local scratch folder
(``--local-dir``, default ``~/.cache/pipeline``) laid out like a cache root:

    <local>/<stage>/<key>.partial/   the stage's `out_dir` (``.partial-p<i>`` for process i of
                                     several); resumable stages resume from it after a kill
    <local>/<stage>/<key>/           a verified local copy of a published output (`local_copy`):
                                     what downstream stages get as ``ctx.inputs[stage]``
    <local>/weights/                 converted backbone weights (``ctx.cache_dir``)

and the remote ``<key>.partial/`` is used only by multi-process runs, to hand every process's
shards to process 0 before its `finalize`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from pipeline import folders, storage
from pipeline.cache import (MANIFEST, PARTIAL_SUFFIX, check_folder, file_digest, json_text,
                            output_dir, partial_dir, require_intact, write_json_atomic)
from pipeline.storage import AnyPath


def _file_entries(folder: Path) -> list[dict]:
    """What a manifest lists: every file but the manifest, with its size and sha256."""
    for f in folders.list_files(folder):
        if _is_temporary(f["path"]):
            # The stage has finished: a hidden temporary file (``.ids.json.tmp123``, a manifest
            # write) is what a killed earlier attempt left in a resumed folder, not output.
            (Path(folder) / f["path"]).unlink(missing_ok=True)
    files = [f for f in folders.list_files(folder) if f["path"] != MANIFEST]
    for f in files:
        f["sha256"] = file_digest(Path(folder) / f["path"])
    return files


def _is_temporary(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name.startswith(".") and ".tmp" in name


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(root: AnyPath, stage: str, key: str, manifest: Mapping[str, Any],
            staging: Path | None = None, local_root: Path | None = None) -> Any:
    """Publish a finished output: after this call `is_complete` is true for it.

    Args:
      root: cache root.
      stage, key: the output.
      manifest: everything but the file list (added here from what the folder holds).
      staging: for a remote root, the local folder the stage wrote (see `staging_dir`); it
        becomes this host's verified local copy. Ignored for a local root, whose partial folder
        is published by one atomic rename.
      local_root: for a remote root, the local scratch folder (see the module docstring).

    Returns:
      The published output folder.
    """
    if storage.is_remote(root):
        if staging is None or local_root is None:
            raise ValueError("publishing to a remote cache needs the local staging folder")
        return _publish_remote(root, stage, key, manifest, Path(staging), Path(local_root))
    root = Path(root)
    src = partial_dir(root, stage, key)
    dst = output_dir(root, stage, key)
    manifest = dict(manifest)
    manifest["files"] = _file_entries(src)   # sizes and digests, computed once, here
    write_json_atomic(src / MANIFEST, manifest)
    _fsync_dir(src)
    if dst.exists():
        # Only reachable with --force: the old complete output is replaced by the new one.
        trash = dst.with_name(f"{key}.old-{os.getpid()}")
        os.replace(dst, trash)
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)
    _fsync_dir(dst.parent)
    return dst


def _publish_remote(root: AnyPath, stage: str, key: str, manifest: Mapping[str, Any],
                    staging: Path, local_root: Path) -> Any:
    dst = output_dir(root, stage, key)
    manifest = dict(manifest)
    files = _file_entries(staging)
    manifest["files"] = files
    text = json_text(manifest)
    # Whatever is there (a --force rerun's old output, or files of an upload that was killed)
    # stops counting as complete before anything in it changes, then goes.
    storage.remove(storage.join(dst, MANIFEST))
    folders.rmtree(dst)
    folders.upload(staging, dst, [f["path"] for f in files])
    arrived = {f["path"]: f["size"] for f in folders.list_files(dst)}
    missing = [f["path"] for f in files if arrived.get(f["path"]) != f["size"]]
    if missing:
        raise OSError(f"upload of {stage} to {dst} is incomplete ({len(missing)} file(s) missing "
                      f"or of the wrong size, first: {missing[0]}); the output stays unpublished. "
                      f"Rerun to try again.")
    storage.write_text(storage.join(dst, MANIFEST), text)   # last: now the output is complete
    storage.write_text(staging / MANIFEST, text)
    _swap_into_place(staging, local_root / stage / key)
    folders.rmtree(partial_dir(root, stage, key))
    return dst


def _swap_into_place(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`, replacing whatever `dst` held."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        trash = dst.with_name(f"{dst.name}.old-{os.getpid()}")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(dst, trash)
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)


def prepare_partial(root: AnyPath, stage: str, key: str, resumable: bool) -> Path:
    """Create the private output folder; wipe leftovers unless the stage resumes from them."""
    p = partial_dir(root, stage, key)
    if p.exists() and not resumable:
        shutil.rmtree(p)
    p.mkdir(parents=True, exist_ok=True)
    return p


def discard_partial(root: AnyPath, stage: str, key: str) -> None:
    folders.rmtree(partial_dir(root, stage, key))


# --- remote roots: local staging, local copies of inputs, the multi-process exchange ------------

def staging_dir(local_root: Path, stage: str, key: str, process_index: int = 0,
                process_count: int = 1) -> Path:
    """The local folder a stage writes into when the cache root is remote.

    One per process when several run on one host, so no process ever uploads a file another
    one is still writing.
    """
    suffix = PARTIAL_SUFFIX if process_count == 1 else f"{PARTIAL_SUFFIX}-p{process_index}"
    return Path(local_root) / stage / (key + suffix)


def prepare_staging(folder: Path, resumable: bool) -> Path:
    """Create a local staging folder; wipe leftovers unless the stage resumes from them."""
    if folder.exists() and not resumable:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def local_copy(root: AnyPath, stage: str, key: str, local_root: Path | None = None) -> Path:
    """A local folder holding a published output, for a stage to read with plain file I/O.

    For a local root that is the output itself. For a remote root it is
    ``<local_root>/<stage>/<key>``, reused when its manifest equals the published one and every
    file the manifest lists is there with its size; otherwise downloaded (into a private folder,
    then renamed into place, so processes sharing a host never see a half copy).

    Raises:
      FileNotFoundError: the output is not published.
      OSError: a download came back incomplete.
      UserError: a local output does not verify (see `damage`; sizes only: cheap).
    """
    if not storage.is_remote(root):
        require_intact(root, stage, key)
        return Path(output_dir(root, stage, key))
    if local_root is None:
        raise ValueError("a remote cache needs a local folder for copies of its outputs")
    src = output_dir(root, stage, key)
    text = storage.read_text(storage.join(src, MANIFEST))
    manifest = json.loads(text)
    dst = Path(local_root) / stage / key
    if _copy_is_complete(dst, manifest):
        return dst
    tmp = dst.with_name(f"{key}.download-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        folders.download(src, tmp, [f["path"] for f in manifest["files"]])
        storage.write_text(tmp / MANIFEST, text)
        # A fresh download is checked against the digests too (it was just read in full anyway).
        if not _copy_is_complete(tmp, manifest) or check_folder(tmp, digests=True):
            raise OSError(f"download of {src} into {tmp} is incomplete or differs from what was "
                          f"published ({check_folder(tmp, digests=True) or 'a file is missing'}); "
                          f"rerun to try again.")
        if _copy_is_complete(dst, manifest):
            return dst  # another process on this host finished the same copy first
        _swap_into_place(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _copy_is_complete(folder: Path, manifest: Mapping[str, Any]) -> bool:
    try:
        if json.loads((folder / MANIFEST).read_text()) != manifest:
            return False
        return all((folder / f["path"]).stat().st_size == f["size"] for f in manifest["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def share_partial(root: AnyPath, stage: str, key: str, staging: Path) -> int:
    """Upload this process's staged files into the remote ``<key>.partial/`` (multi-process).

    Returns:
      How many files were uploaded.
    """
    files = [f["path"] for f in folders.list_files(staging)]
    folders.upload(staging, partial_dir(root, stage, key), files)
    return len(files)


def gather_partial(root: AnyPath, stage: str, key: str, staging: Path) -> int:
    """Download into process 0's staging folder the files other processes shared.

    A file process 0 wrote itself is kept (processes are expected to write distinct names, such
    as shards named by process or by global range).

    Returns:
      How many files were downloaded.
    """
    have = {f["path"] for f in folders.list_files(staging)}
    todo = [f["path"] for f in folders.list_files(partial_dir(root, stage, key))
            if f["path"] not in have]
    folders.download(partial_dir(root, stage, key), staging, todo)
    return len(todo)
