"""One file API for local folders and ``gs://`` URLs (the cache root, report copies, tfds dirs).

`as_path` turns a string into a path object: a `pathlib.Path` for a local folder, an
`etils.epath.Path` for ``gs://...`` (and the other URL schemes epath knows). Both have the
pathlib API (``/``, ``read_text``, ``exists``...), so code that only reads or writes a few files
takes either. The single-file operations the cache needs that differ on an object store live
here too, each with a local and a remote branch: `write_text` (atomic: temp file + rename
locally; one object PUT remotely, which appears whole or not at all), `create_exclusive`
(create-if-absent; a generation precondition on GCS), `read_text`, `remove`. Whole folders
(listing, removal, upload and download) are `pipeline.folders`.

Remote paths go through fsspec (gcsfs for ``gs://``), imported only when a remote path is used:
a local run never pays for it. epath itself is told to use fsspec rather than tf.io.gfile for
``gs://`` (``EPATH_USE_TF=false`` unless the environment already sets it), so nothing here
imports TensorFlow and ``status`` on a GCS cache stays quick.

Testing against an emulator: gcsfs honours ``STORAGE_EMULATOR_HOST`` (e.g. ``http://127.0.0.1:9023``);
fsspec reads default options from the environment, e.g. ``FSSPEC_GCS_TOKEN=anon``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from pathlib import Path
from typing import Any, Iterator, Union

from pipeline.errors import UserError

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Schemes etils.epath maps to an fsspec filesystem.
REMOTE_SCHEMES = ("gs", "s3", "az", "hf")

AnyPath = Union[str, os.PathLike]


class RemoteStorageError(UserError, OSError):
    """A remote path could not be reached or used (network, credentials, permissions)."""


@contextlib.contextmanager
def remote_errors(path: AnyPath) -> Iterator[None]:
    """Turn a failure of the remote filesystem into one clear message naming the URL."""
    try:
        yield
    except (FileNotFoundError, FileExistsError, UserError):
        raise
    except Exception as e:  # aiohttp, google-auth and gcsfs each have their own error types
        raise RemoteStorageError(
            f"{os.fspath(path)}: {type(e).__name__}: {e}. Check the URL and the network, and that "
            f"these credentials may use the bucket (gcloud auth application-default login; on a "
            f"TPU VM, the VM's service account needs roles/storage.objectAdmin on it).") from e


def scheme(path: AnyPath) -> str | None:
    """The URL scheme of `path` (``"gs"``), or None for a local path."""
    m = _URL.match(os.fspath(path))
    return m.group(1).lower() if m else None


def is_remote(path: AnyPath) -> bool:
    """True for ``gs://...`` and other URLs; False for local paths (relative or absolute)."""
    return scheme(path) is not None


def as_path(path: AnyPath) -> Any:
    """A path object for a local path or a URL.

    Args:
      path: a local path (str or PathLike) or a URL such as ``gs://bucket/cache``.

    Returns:
      `pathlib.Path` for local paths (unchanged if it already is one); `etils.epath.Path` for
      URLs. Note `pathlib.Path("gs://b/c")` would silently become ``gs:/b/c``: always go
      through this function for paths a user may give as a URL.

    Raises:
      UserError: for a URL scheme epath cannot open (``http://``, ``ftp://``...).
    """
    if isinstance(path, Path):
        return path
    text = os.fspath(path)
    s = scheme(text)
    if s is None:
        return Path(text)
    if s not in REMOTE_SCHEMES:
        raise UserError(f"{text}: URL scheme {s}:// is not supported for this path; use a local "
                        f"folder or one of {', '.join(x + '://' for x in REMOTE_SCHEMES)}.")
    return _epath().Path(text)


@functools.cache
def _epath():
    # epath picks tf.io.gfile for gs:// whenever TensorFlow is installed, which would import
    # TensorFlow (seconds) for a `status`; gcsfs answers the same calls without it.
    os.environ.setdefault("EPATH_USE_TF", "false")
    from etils import epath

    # epath remembers its first answer; if something (tfds) asked before this call, ask again.
    probe = getattr(getattr(epath, "gpath", None), "_is_tf_installed", None)
    if probe is not None and hasattr(probe, "cache_clear"):
        probe.cache_clear()
    return epath


@functools.cache
def _filesystem(protocol: str):
    try:
        import fsspec

        # No listing cache: other processes and hosts write to the same bucket during a run.
        return fsspec.filesystem(protocol, use_listings_cache=False)
    except ImportError as e:
        extra = "gcsfs" if protocol in ("gs", "gcs") else f"the fsspec backend for {protocol}://"
        raise UserError(f"{protocol}:// paths need {extra} installed: pip install "
                        f"'cached-embeddings-pipeline[gcs]' (or pip install gcsfs). ({e})") from None


def filesystem(path: AnyPath):
    """The fsspec filesystem serving a remote path (gcsfs for ``gs://``)."""
    s = scheme(path)
    if s is None:
        raise ValueError(f"{os.fspath(path)} is a local path")
    return _filesystem(s)


def remote(path: AnyPath) -> tuple[Any, str]:
    """(filesystem, "bucket/key" without the scheme and without a trailing slash) for a URL."""
    fs = filesystem(path)
    return fs, fs._strip_protocol(os.fspath(path)).rstrip("/")


def join(path: AnyPath, *parts: str) -> Any:
    """`as_path(path)` joined with `parts` (a URL stays a URL)."""
    p = as_path(path)
    for part in parts:
        p = p / part
    return p


# --- single files --------------------------------------------------------------------------------

def is_file(path: AnyPath) -> bool:
    if not is_remote(path):
        return os.path.isfile(path)
    fs, p = remote(path)
    with remote_errors(path):
        try:
            return fs.isfile(p)
        except FileNotFoundError:
            return False


def exists(path: AnyPath) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    fs, p = remote(path)
    with remote_errors(path):
        return fs.exists(p)


def read_bytes(path: AnyPath) -> bytes:
    """The file's bytes. Raises FileNotFoundError when it is absent."""
    if not is_remote(path):
        return Path(path).read_bytes()
    fs, p = remote(path)
    with remote_errors(path):
        return fs.cat_file(p)


def read_text(path: AnyPath) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: AnyPath, data: bytes) -> None:
    """Write a whole file so that readers see the old content or the new, never half of it.

    Locally: a temporary file in the same folder, fsync, rename. Remotely: one object upload
    (an object appears only once its upload completed). Parent folders are created locally.
    """
    if is_remote(path):
        fs, p = remote(path)
        with remote_errors(path):
            fs.pipe_file(p, data)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a kill leaves no stray temporary file
        raise
    _drop_dead_temporaries(path)


def _drop_dead_temporaries(path: Path) -> None:
    """Remove ``.<name>.<pid>.tmp`` files that a SIGKILLed writer of `path` left behind."""
    for stray in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        pid = stray.name[len(path.name) + 2:-4]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            stray.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (a writer's or a lock holder's, by its pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_text(path: AnyPath, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def create_exclusive(path: AnyPath, data: bytes) -> bool:
    """Create `path` with `data` only if it does not exist yet.

    Returns:
      True if this call created it; False if it already existed.

    Locally this is ``O_CREAT | O_EXCL``. On GCS the upload carries ``ifGenerationMatch=0``, so
    of two hosts racing, exactly one wins (a storage emulator may ignore the precondition).
    """
    if is_remote(path):
        fs, p = remote(path)
        with remote_errors(path):
            try:
                fs.pipe_file(p, data, mode="create")
            except FileExistsError:
                return False
        return True
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


def remove(path: AnyPath) -> None:
    """Delete one file; absent is fine."""
    if not is_remote(path):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        return
    fs, p = remote(path)
    with remote_errors(path):
        try:
            fs.rm_file(p)
        except FileNotFoundError:
            pass


def default_local_dir() -> Path:
    """Local scratch folder for a remote cache: staging folders, input mirrors, weights.

    ``$PIPELINE_LOCAL_DIR`` if set, else ``$XDG_CACHE_HOME/pipeline`` or ``~/.cache/pipeline``.
    """
    env = os.environ.get("PIPELINE_LOCAL_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pipeline"
