"""The params-aware output cache: keys, manifests and their verification.

Layout under the cache root (a local folder or a ``gs://`` URL)::

    <root>/<stage>/<key>/            a complete output
    <root>/<stage>/<key>/manifest.json
    <root>/<stage>/<key>.partial/    work in progress
    <root>/runs/latest.json          stage keys of the latest `run`, for `show` and `report`
    <root>/.lock                     held by the running `run` command (`pipeline.lock`)

An output is complete exactly when its manifest exists; the manifest lists every file with its
size and sha256, so a reader can check what it is about to trust (`damage`). How an output gets
there (atomically, locally or on GCS) is `pipeline.publish`. Old outputs are never deleted by a
run, so setting a param back reuses the earlier output (a run-cache, as DVC's).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator, Mapping

from pipeline import folders, storage
from pipeline.errors import UserError
from pipeline.params import canonical_json, key_values, to_plain
from pipeline.storage import AnyPath

PARTIAL_SUFFIX = ".partial"
MANIFEST = "manifest.json"


def stage_key(name: str, version: str, params: Mapping[str, Any], upstream: Mapping[str, str],
              fingerprint: str | None = None) -> str:
    """Hash of everything that determines a stage's output.

    Args:
      name: stage name.
      version: the stage's code version.
      params: the declared sections only (section name -> dataclass or plain value).
      upstream: upstream stage name -> its key.
      fingerprint: digest of inputs outside params (photos in a folder), or None.

    Returns:
      20 hex characters (80 bits: collisions are not a practical concern for one cache).
    """
    payload = canonical_json({"stage": name, "version": version, "params": key_values(params),
                              "upstream": dict(upstream), "fingerprint": fingerprint})
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def output_dir(root: AnyPath, stage: str, key: str) -> Any:
    """``<root>/<stage>/<key>`` (a `pathlib.Path`, or an `epath.Path` for a URL root)."""
    return storage.join(root, stage, key)


def partial_dir(root: AnyPath, stage: str, key: str) -> Any:
    return storage.join(root, stage, key + PARTIAL_SUFFIX)


def is_complete(root: AnyPath, stage: str, key: str) -> bool:
    """True when a published output with its manifest exists for this key (see `damage`)."""
    return storage.is_file(storage.join(root, stage, key, MANIFEST))


def file_digest(path: AnyPath) -> str:
    """sha256 of a local file's bytes, in hex (hashlib reads it in blocks: flat memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def damage(root: AnyPath, stage: str, key: str, digests: bool = False) -> str | None:
    """Why a published output cannot be trusted, or None when it verifies.

    Sizes are checked on every call (one stat per file: `status` stays quick); with `digests`
    every file's sha256 is compared too (reads every byte: ``status --verify``). An output
    published before manifests carried digests is checked by size only. A remote output is
    trusted here (its upload was verified file by file before its manifest was written); a
    local copy of it is checked by `local_copy`.

    Returns:
      None, or one line such as ``damaged: train/features.npy is 50,000 bytes, 107,648
      written``; None as well when the output is not published (see `is_complete`).
    """
    if storage.is_remote(root):
        return None
    return check_folder(Path(output_dir(root, stage, key)), digests)


def check_folder(folder: Path, digests: bool = False) -> str | None:
    """`damage` for a local output folder (its manifest lists what was written)."""
    try:
        manifest = read_manifest(folder)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return f"damaged: {MANIFEST} cannot be read ({type(e).__name__})"
    files = manifest.get("files")
    if not isinstance(files, list):
        return f"damaged: {MANIFEST} has no file list"
    for f in files:
        try:
            rel, size = str(f["path"]), int(f["size"])
        except (KeyError, TypeError, ValueError):
            return f"damaged: {MANIFEST} has a malformed file entry"
        path = folder / rel
        try:
            have = path.stat().st_size
        except OSError:
            return f"damaged: {rel} is missing, {size:,} bytes written"
        if have != size:
            return f"damaged: {rel} is {have:,} bytes, {size:,} written"
        if digests and f.get("sha256"):
            try:
                same = file_digest(path) == f["sha256"]
            except OSError as e:
                return f"damaged: {rel} cannot be read ({e.strerror or type(e).__name__})"
            if not same:
                return f"damaged: {rel} changed after it was written (its sha256 differs)"
    return None


def require_intact(root: AnyPath, stage: str, key: str, digests: bool = False) -> None:
    """Raise a UserError naming the file and the fix when a published output does not verify."""
    why = damage(root, stage, key, digests)
    if why is not None:
        raise UserError(
            f"the {stage} output {output_dir(root, stage, key)} is {why}. It will not be read. "
            f"Rerun `python -m pipeline run {stage} --cache-dir {root}` with the params that made "
            f"it (a damaged output counts as stale and is rebuilt).")


def read_manifest(folder: AnyPath) -> dict:
    return json.loads(storage.read_text(storage.join(folder, MANIFEST)))


def iter_manifests(root: AnyPath, stage: str) -> Iterator[dict]:
    """All complete outputs of a stage, newest first (by end time).

    On a remote root the manifests are read lazily, newest upload first (one listing, then one
    read per manifest consumed), so asking for the newest costs one read.
    """
    if storage.is_remote(root):
        return _iter_remote_manifests(root, stage)
    base = Path(root) / stage
    if not base.is_dir():
        return iter(())
    found = []
    for child in base.iterdir():
        if child.name.endswith(PARTIAL_SUFFIX) or not (child / MANIFEST).is_file():
            continue
        try:
            found.append(read_manifest(child))
        except (OSError, ValueError):
            continue  # an unreadable manifest is treated as absent, never as complete
    found.sort(key=lambda m: m.get("ended", ""), reverse=True)
    return iter(found)


def _iter_remote_manifests(root: AnyPath, stage: str) -> Iterator[dict]:
    base = storage.join(root, stage)
    found = [f for f in folders.find(base) if f["path"].count("/") == 1
             and f["path"].endswith("/" + MANIFEST)
             and not f["path"].split("/")[0].endswith(PARTIAL_SUFFIX)]
    # The manifest is the last object of an output to be written, and runs on one cache are
    # serialised by the lock, so upload order is end-time order.
    found.sort(key=lambda f: f["mtime"], reverse=True)
    for f in found:
        try:
            yield json.loads(storage.read_text(storage.join(base, f["path"])))
        except (OSError, ValueError):
            continue


def list_files(folder: AnyPath) -> list[dict]:
    """Every file under `folder` with its size, relative paths, sorted."""
    return folders.list_files(folder)


def json_text(data: Any) -> str:
    """`data` as the indented, key-sorted JSON a manifest is written in."""
    return json.dumps(to_plain(data), indent=2, sort_keys=True)


def write_json_atomic(path: AnyPath, data: Any) -> None:
    """Write JSON so readers never see half a file (temp file + rename; one upload on GCS)."""
    storage.write_text(path, json_text(data))
