"""The linear probe's fit, remembered across heads runs whose probe inputs are the same.

The heads stage reruns on any change to the ``heads`` section, but the probe (C and scaling by
val or CV, the refit, the plain probe) reads only the fields `pipeline.heads.params` marks with
`probe_reads` (``seed`` only where C is chosen by CV: it deals the folds). A change to the MLP,
the learning curve or ``top_k`` reuses the remembered fit instead of sweeping the C path again
(what that saves is measured by ``benchmarks/bench_heads.py``; see docs/benchmarks.md).

A memo is keyed by everything the fit reads: the train and val rows themselves (features after
fusion and the doctor's drops, labels, ids: the CV folds group views by id), those params, the
class count, and the source of the ``pipeline`` and ``stages`` packages (any code edit refits).
It lives in ``<cache>/memo/heads.probe/`` on this host (the local folder for a gs:// cache),
written atomically; an unreadable memo is refitted and rewritten, and only the newest `KEEP`
are kept. The memo is an optimisation only: the stage's output is the same with or without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline import storage
from pipeline.heads.params import HeadsParams, probe_fields

KEEP = 32  # memos kept per cache (each holds the probe's and the plain probe's weights: D x K floats)


def memo_dir(cache_dir: Any) -> Path:
    """Where the memos live: under the cache root, or this host's local folder for gs://."""
    root = storage.default_local_dir() if storage.is_remote(cache_dir) else cache_dir
    return Path(root) / "memo" / "heads.probe"


def probe_key(p: HeadsParams, data: dict, K: int) -> str:
    """sha256 of what `pipeline.heads.probe.fit_logreg` reads (see the module docstring)."""
    from pipeline.exported import code_fingerprint
    from pipeline.heads.probe import uses_cv

    cv = uses_cv(p, np.asarray(data["val"][1]))
    reads: dict[str, Any] = {name: _plain(getattr(p, name)) if when == "always" or cv else None
                             for name, when in probe_fields().items()}
    reads["classes"] = K
    h = hashlib.sha256(json.dumps(reads, sort_keys=True, default=str).encode())
    h.update(code_fingerprint().encode())
    for split in ("train", "val"):
        x, y, ids = data[split]
        x = np.ascontiguousarray(x)
        h.update(f"{split}:{x.dtype}:{x.shape}".encode())
        h.update(memoryview(x).cast("B"))
        h.update(np.asarray(y, np.int64).tobytes())
        h.update("\n".join(map(str, [] if ids is None else list(ids))).encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:32]


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def fit_or_reuse(p: HeadsParams, data: dict, K: int, cache_dir: Any, fit: Callable[[], dict],
                 log: Callable[[str], None] = lambda msg: None) -> dict:
    """`fit()` (a `fit_logreg` call on these inputs, with the plain probe under ``"plain"``), or
    its remembered result.

    Returns what `fit_logreg` returns; ``"z"`` (the splits as the heads see them) is recomputed
    from `data` when the fit is reused.
    """
    from pipeline.heads.probe import as_seen

    key = probe_key(p, data, K)
    path = memo_dir(cache_dir) / f"{key}.npz"
    found = _load(path)
    if found is not None:
        z = as_seen(data, found["mean"], found["scale"])
        log(f"logreg: the same features and probe params as an earlier run (memo {key[:8]}): "
            f"its fit reused, C={found['chosen']['C']:.3g}, standardize={found['standardize']}")
        return {**found, "z": z}
    result = fit()
    _save(path, result)
    return result


def _load(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        meta = json.loads(str(arrays.pop("meta")))
        out = {"W": arrays["W"], "b": arrays["b"], "train_only": (arrays["train_W"], arrays["train_b"]),
               "mean": arrays.get("mean"), "scale": arrays.get("scale"),
               "standardize": bool(meta["standardize"]), "chosen": meta["chosen"],
               "plain": {"W": arrays["plain_W"], "b": arrays["plain_b"], "mean": arrays["plain_mean"],
                         "scale": arrays["plain_scale"], **meta["plain"]}}
        path.touch()  # newest-used first when old memos are dropped
        return out
    except Exception:  # noqa: BLE001 -- truncated, from another version, unreadable: fit again
        return None


def _save(path: Path, result: dict) -> None:
    arrays = {"W": result["W"], "b": result["b"], "train_W": result["train_only"][0],
              "train_b": result["train_only"][1]}
    plain = result["plain"]
    arrays.update({f"plain_{k}": plain[k] for k in ("W", "b", "mean", "scale")})
    if result["mean"] is not None:
        arrays.update(mean=result["mean"], scale=result["scale"])
    meta = json.dumps({"standardize": bool(result["standardize"]), "chosen": result["chosen"],
                       "plain": {"C": plain["C"], "select": plain["select"]}})
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(meta), **{k: np.asarray(v) for k, v in arrays.items()})
    try:
        storage.write_bytes(path, buf.getvalue())  # atomic: a reader sees a whole memo or none
        memos = sorted(path.parent.glob("*.npz"), key=lambda q: q.stat().st_mtime, reverse=True)
        for old in memos[KEEP:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only or full cache costs the next run a fit, nothing else
