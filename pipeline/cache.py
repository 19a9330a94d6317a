"""The params-aware output cache: keys, manifests, atomic publication, and the run lock.

Layout under the cache root::

    <root>/<stage>/<key>/            a complete output (published by one rename)
    <root>/<stage>/<key>/manifest.json
    <root>/<stage>/<key>.partial/    work in progress (kept across kills for resumable stages)
    <root>/runs/latest.json          stage keys of the latest `run`, for `show` and `report`
    <root>/.lock                     held by the running `run` command (flock)

A folder without the `.partial` suffix is complete by construction: the manifest is written
inside the partial folder, then the folder is renamed. Old outputs are never deleted by a run, so
setting a param back reuses the earlier output (a run-cache, as DVC's).
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

from pipeline.errors import UserError
from pipeline.params import canonical_json, to_plain

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
    payload = canonical_json({"stage": name, "version": version, "params": params,
                              "upstream": dict(upstream), "fingerprint": fingerprint})
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def output_dir(root: Path, stage: str, key: str) -> Path:
    return Path(root) / stage / key


def partial_dir(root: Path, stage: str, key: str) -> Path:
    return Path(root) / stage / (key + PARTIAL_SUFFIX)


def is_complete(root: Path, stage: str, key: str) -> bool:
    """True when a published output with its manifest exists for this key."""
    return (output_dir(root, stage, key) / MANIFEST).is_file()


def read_manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / MANIFEST).read_text())


def iter_manifests(root: Path, stage: str) -> Iterator[dict]:
    """All complete outputs of a stage, newest first (by end time)."""
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


def list_files(folder: Path) -> list[dict]:
    """Every file under `folder` with its size, relative paths, sorted."""
    folder = Path(folder)
    out = []
    for dirpath, _, filenames in os.walk(folder):
        for fn in filenames:
            p = Path(dirpath) / fn
            out.append({"path": str(p.relative_to(folder)), "size": p.stat().st_size})
    out.sort(key=lambda f: f["path"])
    return out


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


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(to_plain(data), f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def publish(root: Path, stage: str, key: str, manifest: Mapping[str, Any]) -> Path:
    """Write the manifest into the partial folder and rename it into place.

    The rename is atomic on one filesystem; a crash before it leaves only the `.partial` folder,
    which never counts as complete.
    """
    src = partial_dir(root, stage, key)
    dst = output_dir(root, stage, key)
    manifest = dict(manifest)
    manifest["files"] = [f for f in list_files(src) if f["path"] != MANIFEST]
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


def prepare_partial(root: Path, stage: str, key: str, resumable: bool) -> Path:
    """Create the private output folder; wipe leftovers unless the stage resumes from them."""
    p = partial_dir(root, stage, key)
    if p.exists() and not resumable:
        shutil.rmtree(p)
    p.mkdir(parents=True, exist_ok=True)
    return p


def discard_partial(root: Path, stage: str, key: str) -> None:
    shutil.rmtree(partial_dir(root, stage, key), ignore_errors=True)


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
