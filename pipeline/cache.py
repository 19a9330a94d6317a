"""The params-aware output cache: keys, manifests, publication, and the run lock.

Layout under the cache root (a local folder or a ``gs://`` URL)::

    <root>/<stage>/<key>/            a complete output
    <root>/<stage>/<key>/manifest.json
    <root>/<stage>/<key>.partial/    work in progress
    <root>/runs/latest.json          stage keys of the latest `run`, for `show` and `report`
    <root>/.lock                     held by the running `run` command

An output is complete exactly when its manifest exists. On a local disk the manifest is written
inside the partial folder, then the folder is renamed into place (atomic). On GCS a rename is a
copy per object, so there the output is uploaded straight to ``<key>/`` and the manifest is
uploaded LAST, after a listing confirmed every file arrived with its size: a reader on any host
sees either no manifest (not complete) or the whole output. Old outputs are never deleted by a
run, so setting a param back reuses the earlier output (a run-cache, as DVC's).

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

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from pipeline import storage
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
    """sha256 of a local file's bytes, in hex (read in 1 MiB blocks: flat memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _file_entries(folder: Path) -> list[dict]:
    """What a manifest lists: every file but the manifest, with its size and sha256."""
    for f in storage.list_files(folder):
        if _is_temporary(f["path"]):
            # The stage has finished: a hidden temporary file (``.ids.json.tmp123``, a manifest
            # write) is what a killed earlier attempt left in a resumed folder, not output.
            (Path(folder) / f["path"]).unlink(missing_ok=True)
    files = [f for f in storage.list_files(folder) if f["path"] != MANIFEST]
    for f in files:
        f["sha256"] = file_digest(Path(folder) / f["path"])
    return files


def _is_temporary(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name.startswith(".") and ".tmp" in name


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
    found = [f for f in storage.find(base) if f["path"].count("/") == 1
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
    return storage.list_files(folder)


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


def _json_text(data: Any) -> str:
    return json.dumps(to_plain(data), indent=2, sort_keys=True)


def write_json_atomic(path: AnyPath, data: Any) -> None:
    """Write JSON so readers never see half a file (temp file + rename; one upload on GCS)."""
    storage.write_text(path, _json_text(data))


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
    text = _json_text(manifest)
    # Whatever is there (a --force rerun's old output, or files of an upload that was killed)
    # stops counting as complete before anything in it changes, then goes.
    storage.remove(storage.join(dst, MANIFEST))
    storage.rmtree(dst)
    storage.upload(staging, dst, [f["path"] for f in files])
    arrived = {f["path"]: f["size"] for f in storage.list_files(dst)}
    missing = [f["path"] for f in files if arrived.get(f["path"]) != f["size"]]
    if missing:
        raise OSError(f"upload of {stage} to {dst} is incomplete ({len(missing)} file(s) missing "
                      f"or of the wrong size, first: {missing[0]}); the output stays unpublished. "
                      f"Rerun to try again.")
    storage.write_text(storage.join(dst, MANIFEST), text)   # last: now the output is complete
    storage.write_text(staging / MANIFEST, text)
    _swap_into_place(staging, local_root / stage / key)
    storage.rmtree(partial_dir(root, stage, key))
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
    storage.rmtree(partial_dir(root, stage, key))


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
        storage.download(src, tmp, [f["path"] for f in manifest["files"]])
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
    files = [f["path"] for f in storage.list_files(staging)]
    storage.upload(staging, partial_dir(root, stage, key), files)
    return len(files)


def gather_partial(root: AnyPath, stage: str, key: str, staging: Path) -> int:
    """Download into process 0's staging folder the files other processes shared.

    A file process 0 wrote itself is kept (processes are expected to write distinct names, such
    as shards named by process or by global range).

    Returns:
      How many files were downloaded.
    """
    have = {f["path"] for f in storage.list_files(staging)}
    todo = [f["path"] for f in storage.list_files(partial_dir(root, stage, key))
            if f["path"] not in have]
    storage.download(partial_dir(root, stage, key), staging, todo)
    return len(todo)


@dataclasses.dataclass
class LockHolder:
    pid: int
    host: str
    command: str
    started: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}: {self.command}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on a cache root, held for the whole of a `run` command.

    It is an `flock` on `<root>/.lock`, so the kernel releases it when its holder dies: a stale
    lock left by a killed run is taken over without any manual step. The file also records who
    holds it, so a second run can name the holder in its error.
    """

    def __init__(self, root: Path, command: str):
        self.path = Path(root) / ".lock"
        self.command = command
        self._fd: int | None = None
        self.took_over: LockHolder | None = None

    def _read_holder(self) -> LockHolder | None:
        try:
            return LockHolder(**json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def acquire(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = self._read_holder()
            who = holder.describe() if holder else "another process"
            raise UserError(
                f"The cache {self.path.parent} is in use by another run ({who}). Wait for it to "
                f"finish, or use a different --cache-dir. Two runs on one cache would race to "
                f"write the same outputs.") from None
        previous = self._read_holder()
        if previous is not None and previous.pid != os.getpid() and not _pid_alive(previous.pid):
            self.took_over = previous  # the kernel dropped its flock when it died
        holder = LockHolder(os.getpid(), socket.gethostname(), self.command,
                            time.strftime("%Y-%m-%d %H:%M:%S"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(dataclasses.asdict(holder)).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class RemoteRunLock:
    """The run lock of a cache on GCS: an object ``<root>/.lock`` that names its holder.

    flock does not exist on an object store. The lock object is created only if absent (the
    upload carries GCS's ``ifGenerationMatch=0`` precondition, so of two hosts starting at once
    exactly one gets it) and deleted on release. A run killed without releasing leaves it
    behind: a later run on the same host takes it over when the recorded process is gone; a run
    on another host cannot tell whether the holder is alive, so it stops and says how to remove
    the lock by hand.
    """

    def __init__(self, root: AnyPath, command: str):
        self.root = root
        self.path = storage.join(root, ".lock")
        self.command = command
        self.holder: LockHolder | None = None
        self.took_over: LockHolder | None = None

    def _read_holder(self) -> LockHolder | None:
        try:
            return LockHolder(**json.loads(storage.read_text(self.path)))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            return LockHolder(-1, "unknown", "unreadable lock file", "?")

    def acquire(self) -> "RemoteRunLock":
        me = LockHolder(os.getpid(), socket.gethostname(), self.command,
                        time.strftime("%Y-%m-%d %H:%M:%S"))
        data = json.dumps(dataclasses.asdict(me)).encode()
        try:
            for _ in range(3):
                # Read first: an emulator may not enforce the create-if-absent precondition.
                current = self._read_holder()
                if current is None:
                    if storage.create_exclusive(self.path, data):
                        self.holder = me
                        return self
                    continue  # another run created it between our read and our write
                if current.host == me.host and current.pid > 0 and not _pid_alive(current.pid):
                    storage.write_bytes(self.path, data)
                    self.holder, self.took_over = me, current
                    return self
                raise UserError(
                    f"The cache {self.root} is in use by another run ({current.describe()}). Wait "
                    f"for it to finish, or use a different --cache-dir. Two runs on one cache "
                    f"would race to write the same outputs. If that run is gone (its machine "
                    f"stopped or was preempted), remove the lock: gcloud storage rm {self.path}")
        except OSError as e:
            raise UserError(
                f"cannot write to the cache {self.root}: {type(e).__name__}: {e}. Check that the "
                f"bucket exists and that these credentials may write to it (gcloud auth "
                f"application-default login; on a TPU VM, the VM's service account needs "
                f"roles/storage.objectAdmin on the bucket).") from None
        raise UserError(f"could not take the lock {self.path}: it keeps changing hands.")

    def release(self) -> None:
        if self.holder is None:
            return
        try:
            if self._read_holder() == self.holder:   # never delete a lock another run took over
                storage.remove(self.path)
        except OSError:
            pass  # a leftover lock names this (dead) process; the next run here takes it over
        self.holder = None

    def __enter__(self) -> "RemoteRunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def run_lock(root: AnyPath, command: str) -> "RunLock | RemoteRunLock":
    """The run lock for a cache root: an flock locally, a lock object on GCS."""
    return RemoteRunLock(root, command) if storage.is_remote(root) else RunLock(root, command)
