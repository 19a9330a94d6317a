"""Every image's nearest neighbours by cosine similarity: a blocked, jitted matmul + top-k.

The search is all-pairs, N^2 D multiply-adds, done block by block so memory stays
``query_block x db_block`` floats whatever N is:

    for each block of queries (sharded over the devices of a `jax.sharding.Mesh`):
        for each block of the database (a `lax.scan`, the database replicated):
            S = Q @ B.T                        # (bq, bd) cosine similarities
            mask self-pairs and padding, keep the block's top-k, merge with the running top-k

On accelerators the matmul runs in bfloat16 with float32 accumulation (`dtype="auto"`); the
candidates it returns are then rescored exactly in float32 on the host, so thresholds never see
the rounding. See docs/doctor.md ("Cost model") for the flop and memory figures.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np

SearchDtype = Literal["auto", "float32", "bfloat16"]


def normalize(x: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """Rows of `x` (minus `center`, if given) scaled to unit length, float32; zero rows stay zero."""
    x = np.asarray(x, np.float32)
    if center is not None:
        x = x - center
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


@functools.cache
def _search_fn(n_dev: int, k: int, bq: int, bd: int, dtype: str, approx: bool):
    """The jitted, sharded search for one configuration (compiled once per padded shape).

    `approx` selects `lax.approx_max_k` for each block's candidates (TPUs: an exact top-k sorts
    and would cost more than the matmul; the approximate one runs at matmul speed, Chern et al.,
    "TPU-KNN", 2022); the running top-k merge stays exact.
    """
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, PartitionSpec as P

    mesh = Mesh(np.array(jax.local_devices()[:n_dev]), ("data",))
    cdt = jnp.dtype(dtype)

    def local(q, rows, db, n):                   # q (Nq_local, D), rows (Nq_local,), db (Nd, D)
        nd = db.shape[0] // bd
        dbb = db.reshape(nd, bd, -1).astype(cdt)  # (nd, bd, D)

        def one_query_block(args):
            qb, rb = args                         # (bq, D), (bq,)
            qb = qb.astype(cdt)

            def step(carry, j):
                vals, idx = carry                 # (bq, k) running best
                s = jnp.einsum("qd,bd->qb", qb, dbb[j], preferred_element_type=jnp.float32)
                col = j * bd + jnp.arange(bd)     # (bd,) global database index
                bad = (col[None, :] >= n) | (col[None, :] == rb[:, None])
                s = jnp.where(bad, -jnp.inf, s)
                v, i = jax.lax.approx_max_k(s, k, recall_target=0.99) if approx else jax.lax.top_k(s, k)
                allv = jnp.concatenate([vals, v], axis=1)
                alli = jnp.concatenate([idx, col[i]], axis=1)
                best, pos = jax.lax.top_k(allv, k)
                return (best, jnp.take_along_axis(alli, pos, axis=1)), None

            init = (jnp.full((bq, k), -jnp.inf, jnp.float32), jnp.full((bq, k), -1, jnp.int32))
            (vals, idx), _ = jax.lax.scan(step, init, jnp.arange(nd))
            return vals, idx

        nq = q.shape[0] // bq
        vals, idx = jax.lax.map(one_query_block, (q.reshape(nq, bq, -1), rows.reshape(nq, bq)))
        return vals.reshape(-1, k), idx.reshape(-1, k)

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P("data"), P(), P()),
                            out_specs=(P("data"), P("data")), check_vma=False)
    return jax.jit(sharded), mesh


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def top_k(x: np.ndarray, k: int, block: int = 0, dtype: SearchDtype = "auto",
          devices: int | None = None, approx: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The `k` most similar other rows of every row of `x` (cosine; self excluded).

    Args:
      x: (N, D) unit-length rows (see `normalize`).
      k: neighbours per row (clipped to N - 1).
      block: rows per query block and per database block; memory is ~``block^2`` floats per
        device for the similarity block, plus the replicated database. 0: 512 on CPU (measured
        fastest there: the block stays in cache), 4096 on GPU/TPU (big matmuls for the MXU).
      dtype: matmul input dtype; ``auto`` is bfloat16 on GPU/TPU and float32 on CPU. The
        returned similarities are always exact float32 (rescored here).
      devices: how many local devices to shard the queries over (default: all).
      approx: per-block candidates by `lax.approx_max_k` (default: on TPU only).

    Returns:
      (sims (N, k) float32 descending, idx (N, k) int64); rows with fewer than k others are
      padded with similarity -inf and index -1.
    """
    import jax
    import jax.numpy as jnp

    x = np.ascontiguousarray(x, np.float32)
    n, d = x.shape
    k_eff = max(1, min(k, n - 1))
    if n < 2:
        return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
    n_dev = devices or len(jax.local_devices())
    backend = jax.default_backend()
    block = block or (512 if backend == "cpu" else 4096)
    if dtype == "auto":
        dtype = "float32" if backend == "cpu" else "bfloat16"
    approx = backend == "tpu" if approx is None else approx
    # Small inputs get small blocks, so 100 images do not pay for a 1024-wide block.
    bq = min(block, _round_up(-(-n // n_dev), 8))
    bd = min(block, _round_up(n, 128))
    spare = 2 if dtype == "bfloat16" or approx else 0     # candidates for the exact rescoring
    kk = min(k_eff + spare, bd)
    nq = _round_up(n, bq * n_dev)
    nd = _round_up(n, bd)
    # Sent to the devices in the matmul dtype: half the transfer (and the replicated database's
    # memory on every device) in bfloat16.
    host_dt = np.dtype(jnp.bfloat16) if dtype == "bfloat16" else np.float32
    q = np.zeros((nq, d), host_dt)
    q[:n] = x
    rows = np.arange(nq, dtype=np.int32)
    db = np.zeros((nd, d), host_dt)
    db[:n] = x
    fn, _ = _search_fn(n_dev, kk, bq, bd, dtype, approx)
    _, idx = fn(q, rows, db, np.int32(n))
    idx = np.asarray(idx)[:n].astype(np.int64)                   # (N, kk)
    # Exact float32 rescoring of the candidates, in chunks ((chunk, kk, D) floats at a time).
    sims = np.empty(idx.shape, np.float32)
    for a in range(0, n, 4096):
        part = idx[a:a + 4096]
        sims[a:a + 4096] = np.einsum("nd,nkd->nk", x[a:a + 4096], x[np.where(part < 0, 0, part)])
    sims[idx < 0] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k_eff]
    sims = np.take_along_axis(sims, order, axis=1)
    idx = np.take_along_axis(idx, order, axis=1)
    if k_eff < k:
        sims = np.pad(sims, ((0, 0), (0, k - k_eff)), constant_values=-np.inf)
        idx = np.pad(idx, ((0, 0), (0, k - k_eff)), constant_values=-1)
    return sims.astype(np.float32), idx


def top_k_reference(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy all-pairs top-k (for tests and small N): same contract as `top_k`."""
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    k = min(k, len(x) - 1)
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, axis=1).astype(np.float32), idx.astype(np.int64)
