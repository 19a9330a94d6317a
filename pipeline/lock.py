"""The run lock: one `run` at a time on a cache root (an flock locally, a lock object on GCS)."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from pipeline import storage
from pipeline.errors import UserError
from pipeline.storage import AnyPath


@dataclasses.dataclass
class LockHolder:
    pid: int
    host: str
    command: str
    started: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}: {self.command}"


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
        if previous is not None and previous.pid != os.getpid() and not storage.pid_alive(previous.pid):
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
                if current.host == me.host and current.pid > 0 and not storage.pid_alive(current.pid):
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
