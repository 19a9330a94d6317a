"""Jitted functions whose traces are kept on disk, so a rerun in a new process skips tracing.

XLA's persistent compilation cache (``JAX_COMPILATION_CACHE_DIR``, which the CLI sets to
``<cache>/jax``) saves compiling, but every new process still traces each function in Python and
lowers it before the cache can be consulted: 0.2-0.4 s per function and shape on a CPU, for an
L-BFGS under `vmap` or a whole training loop. The heads stage traces a dozen of those, which was
a third of `run heads` after a params change. `persistent_jit` keeps each trace as a serialized
`jax.export.Exported` next to the compilation cache; loading one costs a few milliseconds, and its
compiled program then comes from XLA's cache as before.

A saved trace is found again only under the same key: the caller's name and static configuration
(everything the function closes over that is not an argument), the source of the ``pipeline`` and
``stages`` packages (any code edit retraces), the jax/jaxlib/flax/optax versions, the platform, the
config flags that change tracing, and the arguments' tree, shapes and dtypes. Without a
compilation cache directory, for arguments that cannot be exported (sharded arrays across several
devices), or for a function `jax.export` cannot serialise, it is plain `jax.jit`. A corrupt or
unreadable file is retraced and rewritten.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Hashable

from pipeline import storage

__all__ = ["persistent_jit", "code_fingerprint"]

_PACKAGES = ("pipeline", "stages")


@functools.cache
def code_fingerprint() -> str:
    """sha256 of every .py file of the pipeline and stages packages (path and contents)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for package in _PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


@functools.cache
def _environment() -> str:
    """Versions and flags that change what a trace produces."""
    import importlib.metadata as md

    import jax

    versions = []
    for dist in ("jax", "jaxlib", "flax", "optax"):
        try:
            versions.append(f"{dist}={md.version(dist)}")
        except md.PackageNotFoundError:
            versions.append(f"{dist}=none")
    flags = [f"{name}={getattr(jax.config, name)}" for name in
             ("jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_rank_promotion")]
    return ";".join([*versions, *flags, f"platform={jax.default_backend()}"])


def _cache_dir() -> Path | None:
    import jax

    base = jax.config.jax_compilation_cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR")
    return Path(base) / "exports" if base else None


def _aval(x: Any):
    """ShapeDtypeStruct of an argument leaf (Python scalars take JAX's default dtypes)."""
    import jax
    import numpy as np

    dtype = getattr(x, "dtype", None)
    if dtype is None:
        dtype = jax.dtypes.canonicalize_dtype(np.result_type(x))
    return jax.ShapeDtypeStruct(np.shape(x), dtype)


def _exportable(leaves: list) -> bool:
    """False for arrays laid out over several devices (the saved trace is a one-device program)."""
    for x in leaves:
        sharding = getattr(x, "sharding", None)
        if sharding is not None and len(getattr(sharding, "device_set", ())) > 1:
            return False
    return True


def persistent_jit(fn: Callable, *, name: str, config: Hashable = ()) -> Callable:
    """`jax.jit(fn)` whose trace per argument shape is saved to and reloaded from disk.

    Args:
      fn: a pure function of positional array pytrees (no static arguments: close over them and
        name them in `config`). Its outputs are arrays.
      name: a stable name for file names and the key (e.g. ``"heads.logreg.fit"``).
      config: everything `fn` closes over that changes its trace, with a deterministic `repr`
        (numbers, strings, tuples, frozen dataclasses). Model weights must be arguments, not
        closures: a closure would be baked into the saved program.

    Returns:
      A callable with `fn`'s signature and results.
    """
    import jax

    jitted = jax.jit(fn)
    loaded: dict[str, Callable] = {}

    @functools.wraps(fn)
    def call(*args):
        leaves, treedef = jax.tree.flatten(args)
        directory = _cache_dir()
        if directory is None or not _exportable(leaves):
            return jitted(*args)
        avals = [_aval(x) for x in leaves]
        key = hashlib.sha256("\n".join([
            name, repr(config), code_fingerprint(), _environment(), str(treedef),
            ",".join(f"{a.dtype}{list(a.shape)}" for a in avals)]).encode()).hexdigest()[:32]
        runner = loaded.get(key)
        if runner is None:
            try:
                exported = _load_or_export(directory / f"{name}-{key}.bin", jitted,
                                           jax.tree.unflatten(treedef, avals))
                runner = jax.jit(exported.call)
            except Exception:  # noqa: BLE001 -- an op jax.export cannot serialise on this platform
                runner = jitted  # still correct, only traced again by the next process
            loaded[key] = runner
        return runner(*args)

    return call


def _load_or_export(path: Path, jitted: Callable, avals: tuple):
    from jax import export

    if path.exists():
        try:
            return export.deserialize(bytearray(path.read_bytes()))
        except Exception:  # noqa: BLE001 -- truncated or from an incompatible jax: trace again
            pass
    exported = export.export(jitted)(*avals)
    try:
        storage.write_bytes(path, exported.serialize())  # atomic: readers see a whole file or none
    except OSError:
        pass  # a read-only or full cache only costs the next process a trace
    return exported
