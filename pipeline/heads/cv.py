"""Choosing the linear probe's C (and whether to standardise) by stratified k-fold cross-validation.

With a couple of val images per class, one val split picks C by noise. Here the train and val
images are pooled and split into k stratified folds, as scikit-learn's `LogisticRegressionCV`
does; every (standardise option, fold) problem is fitted along the whole C path in one jitted
call: `vmap` over the problems, `lax.scan` over C.

Every fit starts from zero, as scikit-learn's do, not from the previous C's solution. With fewer
images than dimensions the classes are separable, the weak-penalty optimum is far away along a
flat valley, and L-BFGS stops (max |gradient| <= tol) wherever the valley gets flat enough: from
zero that is a short, well-regularised solution; warm-started from a smaller C it is that C's
solution again, after one or two steps, and scores worse at weak penalties (docs/benchmarks.md,
"The heads' solver choices"). Each (standardise option, fold) problem is fitted on
that fold's training rows (padded with zero-weight rows to one shape, so the folds batch) and
scores every row; standardisation statistics come from the fold's training rows only.

With fewer training rows than feature dimensions (the few-shot case CV is for, and always with
several backbones fused), each problem is first rotated onto the span of its training rows:
with Q (D x n) an orthonormal basis of the training rows (`logreg.span_basis`),
``X W = (X Q) A`` for ``W = Q A``, and ``||W|| = ||A||``. The L2 penalty keeps the optimum inside that span (any component orthogonal
to every training row changes no training logit and only adds penalty), so fitting A on the
(n, n) rows is exact, a held-out row z scores as ``(z Q) A``, and the fit costs (n / D) of the
full one. Only the fold's training rows span the basis: held-out rows would enlarge every
fold's problem for nothing.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from pipeline.heads import logreg


def stratified_folds(labels: np.ndarray, k: int, seed: int, groups: Sequence[str] | None = None) -> np.ndarray:
    """(N,) fold index in [0, k) per row: each class's rows shuffled and dealt round the folds.

    The deal continues from class to class, so fold sizes differ by at most one row overall and
    a class with fewer than k rows lands in distinct folds. With ``groups`` (one name per row:
    the image an augmented view came from), whole groups are dealt instead, so the views of one
    photo never sit on both sides of a fold (a held-out view with its twin in training would
    score a memorised photo).
    """
    if groups is not None and len(set(groups)) < len(labels):
        _, first, inverse = np.unique(np.asarray(groups, dtype=object).astype(str), return_index=True,
                                          return_inverse=True)
        return stratified_folds(np.asarray(labels)[first], k, seed)[inverse.ravel()]
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), np.int32)
    offset = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold[idx] = (offset + np.arange(len(idx))) % k
        offset += len(idx)
    return fold


def image_groups(ids: Sequence[str]) -> list[str] | None:
    """The photo each row came from (``features.reduce: rows`` names views ``<id>#<view>``), or
    None when ids are missing or every row is its own photo."""
    if not ids:
        return None
    groups = [str(i).rsplit("#", 1)[0] if "#" in str(i) else str(i) for i in ids]
    return groups if len(set(groups)) < len(groups) else None


def train_weights(labels: np.ndarray, mask: np.ndarray, num_classes: int, balanced: bool) -> np.ndarray:
    """Per-row weights of one fold's fit: 0 on held-out rows; 'balanced' from the training rows."""
    w = mask.astype(np.float64)
    if balanced:
        counts = np.bincount(labels[mask], minlength=num_classes).astype(np.float64)
        present = counts > 0
        per_class = np.zeros(num_classes)
        per_class[present] = mask.sum() / (present.sum() * counts[present])
        w = w * per_class[labels]
    return w.astype(np.float32)


def cv_sweep(x: np.ndarray, y: np.ndarray, num_classes: int, Cs: Sequence[float],
             standardize_options: Sequence[bool], folds: np.ndarray, *, balanced: bool = False,
             max_iter: int = 1000, tol: float = 1e-4) -> list[dict]:
    """Cross-validated accuracy and log loss for every (standardise, C).

    Args:
      x: (N, D) pooled train+val features (raw).
      y: (N,) labels.
      num_classes: K.
      Cs: the C grid (sorted here).
      standardize_options: which of False / True to try.
      folds: (N,) fold index per row (`stratified_folds`).
      balanced: class weights N / (K n_c) from each fold's training rows.
      max_iter, tol: L-BFGS stopping rule (see `logreg.path`).

    Returns:
      One row per (standardize, C): ``standardize``, ``C``, ``cv_accuracy`` and ``cv_log_loss``
      (pooled over the held-out rows of all folds: every row is held out once), ``n_iter``
      (the most any fold took).
    """
    from pipeline.heads.metrics import softmax

    Cs = np.sort(np.asarray(Cs, np.float64))
    k = int(folds.max()) + 1
    fits, alls, ys, sws = [], [], [], []
    for std in standardize_options:
        for f in range(k):
            train = folds != f
            xp = x
            if std:
                mean, scale = logreg.standardizer(x[train])
                xp = (x - mean) / scale
            basis = logreg.span_basis(xp[train])
            fit_rows = xp[train] if basis is None else xp[train] @ basis   # (n_f, r_f)
            fits.append(fit_rows)
            alls.append(xp if basis is None else xp @ basis)               # (N, r_f): held-out too
            ys.append(y[train])
            sws.append(train_weights(y, train, num_classes, balanced)[train])
    # Folds differ by a row or so: pad to one shape (zero rows weigh 0; zero columns stay 0).
    n, r = max(a.shape[0] for a in fits), max(a.shape[1] for a in fits)
    pad = lambda a, rows, cols: np.pad(a, ((0, rows - a.shape[0]), (0, cols - a.shape[1])))  # noqa: E731
    Xfit = np.stack([pad(a, n, r) for a in fits]).astype(np.float32)
    Xall = np.stack([pad(a, len(y), r) for a in alls]).astype(np.float32)
    Yfit = np.stack([np.pad(v, (0, n - len(v))) for v in ys]).astype(np.int32)
    SWfit = np.stack([np.pad(v, (0, n - len(v))) for v in sws]).astype(np.float32)
    fn = _cv_fn(num_classes, int(max_iter), float(tol))
    logits, iters = fn(Xfit, Yfit, SWfit, Xall, Cs.astype(np.float32))
    logits, iters = np.asarray(logits), np.asarray(iters)  # (P, nC, N, K), (P, nC)
    rows = []
    for s, std in enumerate(standardize_options):
        for c, C in enumerate(Cs):
            held = np.empty((len(y), num_classes))
            for f in range(k):
                rows_f = folds == f
                held[rows_f] = logits[s * k + f, c][rows_f]
            prob = softmax(held)
            p_true = np.clip(prob[np.arange(len(y)), y], 1e-15, 1.0)
            rows.append({"standardize": bool(std), "C": float(C),
                         "cv_accuracy": float(np.mean(prob.argmax(1) == y)),
                         "cv_log_loss": float(-np.mean(np.log(p_true))),
                         "n_iter": int(iters[s * k:(s + 1) * k, c].max())})
    return rows


def best(rows: list[dict]) -> dict:
    """Highest CV accuracy; ties go to the lower CV log loss (accuracy is coarse on few images)."""
    return max(rows, key=lambda r: (r["cv_accuracy"], -r["cv_log_loss"]))


def choose(rows: list[dict], n_rows: int, tie_se: float = 0.25, criterion: str = "log_loss") -> dict:
    """The (standardize, C) point to refit.

    ``criterion="log_loss"`` (the default, as ``heads.logreg.criterion``'s): the lowest pooled
    held-out log loss (ties: the higher accuracy, then the larger C). The log loss scores every held-out image by how much probability it gives the
    right class, so it separates points that accuracy, counting a few dozen images, calls equal.

    ``criterion="accuracy"``: the weakest penalty statistically tied with the best accuracy.

    Every point whose CV accuracy is within ``tie_se`` binomial standard errors of the best,
    ``tie_se * sqrt(a (1 - a) / n_rows)``, counts as tied with it; of those the largest C wins,
    then the higher CV accuracy, then the lower log loss. On pretrained features test accuracy is
    flat or still rising past the knee of the C curve, so CV noise costs most when it pulls C down.
    A wide band helps on pretrained features and hurts on classes that need a strong penalty, so
    the default is a quarter (docs/benchmarks.md, "The heads' solver choices").
    """
    if criterion == "log_loss":
        return min(rows, key=lambda r: (r["cv_log_loss"], -r["cv_accuracy"], -r["C"]))
    top = best(rows)["cv_accuracy"]
    band = tie_se * float(np.sqrt(max(top * (1.0 - top), 0.0) / max(n_rows, 1)))
    tied = [r for r in rows if r["cv_accuracy"] >= top - band - 1e-12]
    return max(tied, key=lambda r: (r["C"], r["cv_accuracy"], -r["cv_log_loss"]))


@functools.cache
def _cv_fn(num_classes: int, max_iter: int, tol: float):
    """``(Xfit (P, n, r), yfit (P, n), swfit (P, n), Xall (P, N, r), Cs (nC,)) -> logits (P, nC, N, K),
    n_iter (P, nC)``: fit on each problem's training rows, score every row."""
    import jax
    import jax.numpy as jnp

    from pipeline.exported import persistent_jit

    _, fit = logreg._jax_fit_fn(num_classes, max_iter, tol)
    k_out = logreg.n_outputs(num_classes)

    def run(Xfit, yfit, swfit, Xall, Cs):
        def one(X, y, sw, Z):
            zero = (jnp.zeros((X.shape[1], k_out), X.dtype), jnp.zeros((k_out,), X.dtype))

            def step(carry, C):
                W, b, it = fit(X, y, sw, C, *zero)  # cold start: see the module docstring
                return carry, (logreg.linear_logits(W, b, Z), it)

            _, out = jax.lax.scan(step, 0, Cs)
            return out

        return jax.vmap(one)(Xfit, yfit, swfit, Xall)

    return persistent_jit(run, name="heads.cv.path", config=(num_classes, max_iter, tol, "cold", "fold-span"))
