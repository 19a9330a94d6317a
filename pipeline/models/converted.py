"""The converted-params cache: a backbone's published weights converted once to float32 arrays.

``<cache>/weights/converted/<name>-<checksum[:16]>-c<CONVERT_VERSION>.npz`` holds the flat params
and a manifest (name, checksum, every shape, parameter counts). It is written to a temporary file
and renamed; a cache that fails to read back, has non-finite values or does not match its own
manifest is deleted and rebuilt from the published weights (`pipeline.models.registry.load_params`).
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from pipeline.models import weights as weights_lib
from pipeline.models.spec import BackboneSpec


def converted_path(spec: BackboneSpec, cache_dir: str | os.PathLike, convert_version: str) -> Path:
    """Where the converted params for `spec` are cached (depends on the weights' checksum).

    For weights without a published checksum, the digest pinned at their first download stands in
    (`weights.reference_checksum`), so a re-download of different bytes is converted afresh.
    """
    digest = weights_lib.reference_checksum(spec.weights, cache_dir).split(":", 1)[-1][:16]
    return Path(cache_dir) / "weights" / "converted" / f"{spec.name}-{digest}-c{convert_version}.npz"


def _manifest(flat: dict[str, np.ndarray], spec: BackboneSpec) -> dict:
    return {"name": spec.name, "checksum": spec.weights.checksum,
            "shapes": {k: list(v.shape) for k, v in sorted(flat.items())},
            "params": int(sum(v.size for k, v in flat.items() if k.startswith("features/"))),
            "head_params": int(sum(v.size for k, v in flat.items() if k.startswith("head/")))}


def save(path: Path, params: dict, spec: BackboneSpec) -> None:
    from pipeline.models.convert import flatten_params

    flat = {k: np.asarray(v, np.float32) for k, v in flatten_params(params).items()}
    manifest = np.frombuffer(json.dumps(_manifest(flat, spec)).encode(), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, __manifest__=manifest, **flat)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared by users of a machine
        os.replace(tmp, path)  # readers never see a half-written cache
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path, spec: BackboneSpec) -> dict | None:
    """Params from the converted cache, or None if it is missing or corrupt (then it is deleted)."""
    from pipeline.models.convert import unflatten_params

    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:  # zip CRCs are checked as members are read
            manifest = json.loads(z["__manifest__"].tobytes().decode())
            flat = {k: z[k] for k in z.files if k != "__manifest__"}
        if manifest.get("checksum") != spec.weights.checksum or manifest != _manifest(flat, spec):
            raise ValueError("manifest does not match contents")
        if not all(np.isfinite(v).all() for v in flat.values()):
            raise ValueError("non-finite values")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, json.JSONDecodeError):
        path.unlink(missing_ok=True)  # corrupt: rebuild from the published weights
        return None
    return unflatten_params(flat)


def read_manifest(path: Path) -> dict | None:
    """The manifest stored in a converted cache (cheap: reads one small member), or None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(z["__manifest__"].tobytes().decode())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None
