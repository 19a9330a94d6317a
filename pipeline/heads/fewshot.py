"""Learning curve: test accuracy against labelled images per class, for logreg and kNN.

Each point draws `shots` training images per class (fewer where a class has fewer), fits on them
alone (standardisation statistics from those images only) and scores the whole test split; the
point is the mean over `draws` seeded draws. The draws of a point are fitted together in one
vmapped, jitted L-BFGS call (one compilation per point size, kept by the persistent XLA cache).
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from pipeline.heads import logreg
from pipeline.heads.artifact import CurvePoint
from pipeline.heads.metrics import mean_per_class_accuracy


def draw_shots(labels: np.ndarray, shots: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of up to `shots` random examples of each class (all of a class with fewer)."""
    picks = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx):
            picks.append(rng.choice(idx, size=min(shots, len(idx)), replace=False))
    return np.sort(np.concatenate(picks))


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32), for cosine similarity by a matrix product."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_votes(sim: np.ndarray, train_y: np.ndarray, num_classes: int, k: int,
              temperature: float = 0.07) -> np.ndarray:
    """kNN vote shares from a (M, N) cosine-similarity matrix to N labelled neighbours."""
    k = min(k, sim.shape[1])
    nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # (M, k) nearest, unordered
    w = np.exp((np.take_along_axis(sim, nn, axis=1) - 1.0) / temperature)  # shifted: no overflow
    votes = np.einsum("mk,mkc->mc", w.astype(np.float64), np.eye(num_classes)[train_y[nn]])
    return votes / votes.sum(axis=1, keepdims=True)


def learning_curve(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                   num_classes: int, shots: Sequence[int | str], draws: int, seed: int, C: float,
                   standardize: bool, knn_k: int, solver: logreg.Solver = "jax",
                   max_iter: int = 1000, tol: float = 1e-4,
                   full_logreg_test_pred: np.ndarray | None = None) -> list[dict]:
    """Accuracy on the test split for each number of training images per class.

    Args:
      train_x, train_y: the train split (features, labels).
      test_x, test_y: the split scored (test).
      num_classes: K.
      shots: images per class, integers or ``"all"`` (the whole train split, one draw).
      draws: seeded draws averaged per integer point.
      seed: base seed; draw d of every point uses ``seed + d``.
      C: logreg inverse regularisation (the one the main sweep chose on val).
      standardize: standardise features with each draw's own statistics.
      knn_k: neighbours for the kNN baseline.
      solver, max_iter, tol: logreg fitting (see `logreg.path`).
      full_logreg_test_pred: test predictions of a logreg already fit on the whole train split
        at C (the sweep has one), reused for the ``"all"`` point.

    Returns:
      One `pipeline.heads.artifact.CurvePoint` per size, in the order of `shots`.
    """
    numeric = sorted({int(s) for s in shots if s != "all"})
    subsets = {s: [draw_shots(train_y, s, num_classes, np.random.default_rng(seed + d)) for d in range(draws)]
               for s in numeric}
    problems = [(s, idx) for s in numeric for idx in subsets[s]]
    if "all" in shots:
        problems.append(("all", np.arange(len(train_y))))

    # Logreg: integer points in one padded, vmapped fit; "all" from the sweep when given.
    small = [(s, idx) for s, idx in problems if s != "all" or full_logreg_test_pred is None]
    preds = _fit_predict_many([idx for _, idx in small], train_x, train_y, test_x, num_classes, C,
                              standardize, solver, max_iter, tol)
    logreg_pred = {id(idx): p for (_, idx), p in zip(small, preds)}

    sim = unit_rows(test_x) @ unit_rows(train_x).T  # (M, N) once; a draw's kNN reads its columns
    rows = []
    for s in [*numeric, *(["all"] if "all" in shots else [])]:
        idxs = subsets[s] if s != "all" else [problems[-1][1]]
        lr_acc, lr_mpca, knn_acc, n = [], [], [], []
        for idx in idxs:
            p = logreg_pred.get(id(idx), full_logreg_test_pred if s == "all" else None)
            lr_acc.append(float(np.mean(p == test_y)))
            lr_mpca.append(mean_per_class_accuracy(test_y, p, num_classes))
            votes = knn_votes(sim[:, idx], train_y[idx], num_classes, knn_k)
            knn_acc.append(float(np.mean(votes.argmax(1) == test_y)))
            n.append(len(idx))
        rows.append(CurvePoint(shots=s, n_train=float(np.mean(n)), draws=len(idxs),
                               logreg_accuracy=float(np.mean(lr_acc)), logreg_accuracy_std=float(np.std(lr_acc)),
                               logreg_mean_per_class_accuracy=float(np.mean(lr_mpca)),
                               knn_accuracy=float(np.mean(knn_acc)), knn_accuracy_std=float(np.std(knn_acc))))
    return rows


def _fit_predict_many(subsets: list[np.ndarray], X: np.ndarray, y: np.ndarray, X_test: np.ndarray,
                      num_classes: int, C: float, standardize: bool, solver: logreg.Solver,
                      max_iter: int, tol: float) -> list[np.ndarray]:
    """Fit logreg on each subset of (X, y) at one C; return test predictions per subset.

    With the jax solver, the subsets of one size (the draws of one point) are fitted together in
    one vmapped L-BFGS call; padding every point to the largest would cost the 1-shot fits as
    much as the 20-shot ones.
    """
    prepared, bases = [], []
    for idx in subsets:
        xs = X[idx].astype(np.float32)
        mean, scale = logreg.standardizer(xs) if standardize else (None, None)
        xs = xs if mean is None else (xs - mean) / scale
        # Fewer images than dimensions: fit on the span of the rows (exact, see logreg.path).
        basis = logreg.span_basis(xs) if solver == "jax" else None
        if basis is not None:
            xs = xs @ basis
        prepared.append((xs, y[idx], mean, scale))
        bases.append(basis)
    fits: list = [None] * len(prepared)
    if solver == "jax":
        by_size: dict[int, list[int]] = {}
        for i, (xs, _, _, _) in enumerate(prepared):
            by_size.setdefault(len(xs), []).append(i)
        fn = _vmapped(num_classes, max_iter, tol)
        for members in by_size.values():
            Ws, bs = fn(np.stack([prepared[i][0] for i in members]),
                        np.stack([prepared[i][1] for i in members]).astype(np.int32), np.float32(C))
            Ws, bs = np.asarray(Ws), np.asarray(bs)  # index on the host: no slicing programs
            for j, i in enumerate(members):
                fits[i] = (Ws[j], bs[j])
    else:
        for i, (xs, ys, _, _) in enumerate(prepared):
            p = logreg.path(xs, ys, [C], num_classes, solver=solver, max_iter=max_iter, tol=tol)
            fits[i] = (p.W[0], p.b[0])
    from pipeline.heads.trained import fold_standardization

    preds = []
    X_test = np.asarray(X_test, np.float32)
    for (W, b), (_, _, mean, scale), basis in zip(fits, prepared, bases):
        W = W if basis is None else basis @ W
        # Standardisation folded into the head: one (D, K') rescale per draw instead of
        # rescaling every test row.
        W, b = fold_standardization(W, b, mean, scale)
        preds.append(np.argmax(logreg.linear_logits(W, b, X_test), axis=1))
    return preds


@functools.cache
def _vmapped(num_classes: int, max_iter: int, tol: float):
    import jax
    import jax.numpy as jnp

    from pipeline.exported import persistent_jit

    _, fit = logreg._jax_fit_fn(num_classes, max_iter, tol)
    k_out = logreg.n_outputs(num_classes)

    def run(Xs, ys, C):  # (P, n, d), (P, n), () -> (P, d, K'), (P, K')
        def one(X, y):
            W, b, _ = fit(X, y, jnp.ones(X.shape[0], X.dtype), C, jnp.zeros((X.shape[1], k_out), X.dtype),
                          jnp.zeros((k_out,), X.dtype))
            return W, b
        return jax.vmap(one)(Xs, ys)

    return persistent_jit(run, name="heads.fewshot.fit", config=(num_classes, max_iter, tol))
