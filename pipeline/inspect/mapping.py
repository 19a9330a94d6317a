"""A 2-D map of cached features: PCA to a few dozen dimensions, then t-SNE or UMAP.

Which method is the default was measured (``benchmarks/bench_inspect.py``, 7,349 x 1,280
features): see docs/benchmarks.md. All methods are seeded and run single-threaded
where threads would make the layout depend on scheduling, so one seed gives one map.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np

Method = Literal["tsne", "opentsne", "umap"]
METHODS = ("tsne", "opentsne", "umap")


def pca(features: np.ndarray, dims: int, seed: int = 0) -> np.ndarray:
    """Centre and project onto the top `dims` principal directions (float64 SVD, sign-fixed).

    The sign of each component is fixed (largest-magnitude loading positive), so the result does
    not depend on the LAPACK build's sign choice.
    """
    x = np.asarray(features, np.float64)
    x = x - x.mean(axis=0)
    dims = min(dims, x.shape[0], x.shape[1])
    # Covariance eigendecomposition: D x D (1280^2) is far cheaper than an SVD of N x D.
    cov = x.T @ x / max(1, len(x) - 1)
    vals, vecs = np.linalg.eigh(cov)
    vecs = vecs[:, ::-1][:, :dims]  # (D, dims), largest first
    signs = np.sign(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(dims)])
    return (x @ (vecs * signs)).astype(np.float32)  # (N, dims)


def embed_2d(features: np.ndarray, method: Method = "opentsne", seed: int = 0, pca_dims: int = 50,
             perplexity: float = 30.0, neighbors: int = 15) -> np.ndarray:
    """(N, D) features -> (N, 2) coordinates, deterministic for a seed.

    Args:
      features: (N, D) float.
      method: ``opentsne`` (FFT-accelerated t-SNE, Linderman et al. 2019), ``tsne`` (scikit-learn's
        Barnes-Hut t-SNE) or ``umap`` (umap-learn).
      seed: random seed of the layout.
      pca_dims: PCA dimensions before the embedding (the usual t-SNE/UMAP preprocessing; 0 = none).
      perplexity: t-SNE perplexity (lowered automatically for tiny N).
      neighbors: UMAP's n_neighbors (lowered automatically for tiny N).

    Returns:
      (N, 2) float32, centred, scaled so the larger axis spans [-1, 1].
    """
    x = np.asarray(features, np.float32)
    n = len(x)
    if n < 3:
        return np.zeros((n, 2), np.float32) if n else np.zeros((0, 2), np.float32)
    if pca_dims and x.shape[1] > pca_dims:
        x = pca(x, pca_dims, seed)
    perp = float(min(perplexity, max(1.0, (n - 1) / 3.0)))
    if method == "opentsne":
        from openTSNE import TSNE

        # Exact neighbours for small maps, Annoy (seeded, C++) beyond: "auto" may pick pynndescent,
        # whose numba compilation alone costs seconds.
        y = np.asarray(TSNE(n_components=2, perplexity=perp, initialization="pca", random_state=seed,
                            neighbors="exact" if n < 1000 else "annoy", n_jobs=1, verbose=False).fit(x))
    elif method == "tsne":
        from sklearn.manifold import TSNE as SkTSNE

        y = SkTSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(x)
    elif method == "umap":
        try:
            import umap
        except ImportError:
            from pipeline.errors import UserError

            raise UserError("inspect.map_method: umap needs umap-learn, an optional extra: "
                            "pip install '.[umap]' (or use opentsne, the default).") from None

        y = umap.UMAP(n_components=2, n_neighbors=int(min(neighbors, n - 1)), random_state=seed,
                      n_jobs=1).fit_transform(x)
    else:
        raise ValueError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    y = np.asarray(y, np.float64)
    y -= y.mean(axis=0)
    span = float(np.abs(y).max()) or 1.0
    return (y / span).astype(np.float32)


def timed(features: np.ndarray, method: Method, seed: int = 0) -> tuple[np.ndarray, float]:
    """`embed_2d` and its wall time in seconds."""
    t0 = time.perf_counter()
    y = embed_2d(features, method, seed)
    return y, time.perf_counter() - t0
