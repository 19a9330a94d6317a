"""Remembered sub-results of the gradient stages, keyed by exactly what each one reads.

A head change makes `ideal`, `adversarial` and `inspect` stale (they read the heads stage), but
much of their work never touches the head: the ideal image of an ImageNet class, the feature maps
of a photo. Each such piece is stored under ``<cache>/memo/<name>/<key>.npz``, the key a digest of
its inputs (backbone, the params it reads, the weights of the head it reads if any, the code), so
a rerun finds the pieces whose inputs did not change and computes only the rest. The DESIGN's
rule: a memo is an optimisation only; the stage's output is the same with or without it, which
the pieces guarantee by being computed the same way whichever others are computed beside them.

Writes are atomic (a reader sees a whole memo or none); a damaged or unreadable memo counts as
absent and is recomputed; only the newest `KEEP` per name are kept. A gs:// cache keeps its
memos in this host's local folder.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pipeline import storage

KEEP = 64  # memos kept per name (an ideal target's batch: ~0.3 MB)


def memo_dir(cache_dir: Any, name: str) -> Path:
    """Where memos of `name` live: under the cache root, or this host's local folder for gs://."""
    root = storage.default_local_dir() if storage.is_remote(cache_dir) else cache_dir
    return Path(root) / "memo" / name


def tree_digest(tree: Any) -> str:
    """sha256 (hex, 32 chars) of a pytree of arrays: its structure, dtypes, shapes and bytes."""
    import jax

    leaves, treedef = jax.tree_util.tree_flatten(tree)
    h = hashlib.sha256(str(treedef).encode())
    for leaf in leaves:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.dtype}:{a.shape}".encode())
        h.update(memoryview(a).cast("B") if a.size else b"")
    return h.hexdigest()[:32]


def key(reads: Mapping[str, Any]) -> str:
    """Digest of a JSON-able description of a piece's inputs, with the code's fingerprint."""
    from pipeline.exported import code_fingerprint

    h = hashlib.sha256(json.dumps(reads, sort_keys=True, default=str).encode())
    h.update(code_fingerprint().encode())
    return h.hexdigest()[:32]


def load(cache_dir: Any, name: str, k: str) -> dict[str, np.ndarray] | None:
    """The arrays remembered under `k`, or None (absent, damaged, unreadable)."""
    path = memo_dir(cache_dir, name) / f"{k}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            out = {n: f[n] for n in f.files}
        path.touch()  # newest-used first when old memos are dropped
        return out
    except Exception:  # noqa: BLE001 -- truncated, from another version, unreadable: compute again
        return None


def save(cache_dir: Any, name: str, k: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Remember `arrays` under `k` (atomic; failures cost the next run a recomputation, nothing else)."""
    path = memo_dir(cache_dir, name) / f"{k}.npz"
    buf = io.BytesIO()
    np.savez(buf, **{n: np.asarray(v) for n, v in arrays.items()})
    try:
        storage.write_bytes(path, buf.getvalue())
        memos = sorted(path.parent.glob("*.npz"), key=lambda q: q.stat().st_mtime, reverse=True)
        for old in memos[KEEP:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass
