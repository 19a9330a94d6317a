"""Outliers / off-domain photos: far from every other image in feature space.

The score of an image is its kNN distance, ``1 - mean cosine similarity to its k nearest other
images`` (Sun et al., "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022,
use the k-th distance on normalised features; the mean of the k is steadier on small folders).
Exact and near-duplicate copies are left out of an image's neighbours first, so an off-domain
picture saved twice still stands out. An image is flagged when its score is a robust outlier of
the whole set's scores, ``median + z * 1.4826 * MAD`` (a z-score on the median and the
median absolute deviation, which a few outliers cannot drag) *and* above an absolute distance.

Scores use the raw features (not mean-centred): measured on pets-dev, cats-dogs-dev and
pets-tune with five off-domain pictures added (`planted.off_domain_images`), raw kNN distances
(k = 5, efficientnet_lite0) of the pictures were 0.68-0.77 and of every pet photo at most 0.63,
while on centred features the two overlapped. The absolute bound is what separates them; the
z-score guard keeps a folder of unrelated photos (all far apart) from being flagged wholesale.
"""

from __future__ import annotations

import numpy as np


def knn_distance(sims: np.ndarray, idx: np.ndarray, k: int, same_group: np.ndarray | None = None
                 ) -> np.ndarray:
    """(N,) mean cosine distance to the k nearest neighbours that are not copies of the row.

    Args:
      sims, idx: (N, K) top-K neighbours from `neighbors.top_k` (K >= k; -inf/-1 padding).
      k: neighbours averaged.
      same_group: (N,) duplicate-group id per row (-1: none); neighbours in the row's own group
        are skipped.
    """
    s = sims.astype(np.float64).copy()
    if same_group is not None:
        g = same_group[:, None]
        s[(g >= 0) & (same_group[np.where(idx < 0, 0, idx)] == g)] = -np.inf
    s = -np.sort(-s, axis=1)[:, :k]
    valid = np.isfinite(s)
    count = np.maximum(valid.sum(axis=1), 1)
    mean = np.where(valid, s, 0.0).sum(axis=1) / count
    return np.where(valid.any(axis=1), 1.0 - mean, 1.0)


def robust_z(scores: np.ndarray) -> np.ndarray:
    """(N,) (score - median) / (1.4826 MAD); all zeros when the scores do not vary."""
    med = np.median(scores)
    mad = 1.4826 * np.median(np.abs(scores - med))
    if mad <= 1e-12:
        return np.zeros_like(scores, dtype=np.float64)
    return (scores - med) / mad
