"""Likely label errors: out-of-fold logreg probabilities fed to confident learning.

`out_of_fold` fits one multinomial logistic regression per fold on the cached features, all folds
at once: the folds are one `jax.vmap` over per-fold sample weights (a held-out row weighs 0), so
there is one small compiled loop whatever the number of folds, and every image's probabilities
come from a model that never saw it.

`find_label_issues` is confident learning (Northcutt, Jiang & Chuang, "Confident Learning:
Estimating Uncertainty in Dataset Labels", JAIR 2021) as cleanlab 2.9.0 computes it with its
defaults (``filter_by="prune_by_noise_rate"``, ``min_examples_per_class=1``, ``frac_noise=1``),
written out in numpy: the per-class thresholds, the calibrated confident joint, and pruning the
largest-margin examples of each off-diagonal cell. `tests/test_doctor.py` checks it against
cleanlab itself. It is written here rather than imported because cleanlab pulls pandas in, whose
import alone costs a large share of the stage's time on a small folder.
"""

from __future__ import annotations

import functools

import numpy as np

from pipeline.heads.cv import stratified_folds

_EPS = 1e-6  # cleanlab's FLOATING_POINT_COMPARISON


def reduce(x: np.ndarray, max_dim: int) -> np.ndarray:
    """(N, r) coordinates of the centred rows on their top r <= max_dim principal axes.

    With r = rank (always so when N <= max_dim) an L2-penalised linear model on these is the same
    model as on `x` itself: its weights lie in the span of the rows and the axes are orthonormal.
    """
    xc = np.asarray(x, np.float64) - np.mean(x, axis=0)
    n, d = xc.shape
    if n <= d:                                    # eigen-decompose the (N, N) Gram matrix
        vals, vecs = np.linalg.eigh(xc @ xc.T)
        top = np.argsort(-vals)[:min(max_dim, n)]
        z = vecs[:, top] * np.sqrt(np.clip(vals[top], 0, None))
    else:                                         # or the (D, D) scatter matrix
        vals, vecs = np.linalg.eigh(xc.T @ xc)
        top = np.argsort(-vals)[:min(max_dim, d)]
        z = xc @ vecs[:, top]
    return z.astype(np.float32)


@functools.cache
def _fold_fit(num_classes: int, steps: int):
    """Jitted ``fit(Z, y, weights (F, N), l2 (F,), lipschitz (F,)) -> (W (F, r, K), b (F, K))``.

    Nesterov's accelerated gradient for a strongly convex smooth objective (constant step 1/L,
    momentum (sqrt(k) - 1) / (sqrt(k) + 1), k = L / mu), one fold per `vmap` lane. A fixed number
    of steps compiles to one small loop body in well under a second, where the heads' L-BFGS
    (with its line search) takes seconds to compile. At the doctor's C, 300 steps land within
    ~0.01 in probability of scikit-learn's exact optimum (0.013 at most, measured on 207 real
    photos of 16 breeds, tests/test_doctor.py), far below what changes a ranking of label issues.
    """
    import jax
    import jax.numpy as jnp

    def fit(Z, y, w, l2, lip):
        Y = jax.nn.one_hot(y, num_classes, dtype=Z.dtype)
        wn = w / jnp.sum(w)

        def grad(W, b):
            p = jax.nn.softmax(Z @ W + b, axis=1)
            g = (p - Y) * wn[:, None]                          # (N, K)
            return Z.T @ g + l2 * W, jnp.sum(g, axis=0)

        kappa = lip / l2
        mom = (jnp.sqrt(kappa) - 1) / (jnp.sqrt(kappa) + 1)

        def step(carry, _):
            W, b, Wp, bp = carry
            vW, vb = W + mom * (W - Wp), b + mom * (b - bp)    # look-ahead point
            gW, gb = grad(vW, vb)
            return (vW - gW / lip, vb - gb / lip, W, b), None

        W0 = jnp.zeros((Z.shape[1], num_classes), Z.dtype)
        b0 = jnp.zeros((num_classes,), Z.dtype)
        (W, b, _, _), _ = jax.lax.scan(step, (W0, b0, W0, b0), None, length=steps)
        return W, b

    return jax.jit(jax.vmap(fit, in_axes=(None, None, 0, 0, 0)))


def out_of_fold(x: np.ndarray, labels: np.ndarray, num_classes: int, folds: int, C: float,
                seed: int, steps: int = 300, max_dim: int = 256) -> np.ndarray:
    """(N, K) class probabilities of every row from the logreg fitted without its fold.

    The objective is scikit-learn's (and `pipeline.heads.logreg`'s): weighted mean cross-entropy
    plus ``||W||^2 / (2 C n_fold)``, fitted on the rows' principal coordinates (`reduce`).

    Args:
      x: (N, D) features.
      labels: (N,) given labels.
      num_classes: K.
      folds: number of folds (>= 2).
      C: inverse L2 strength (scikit-learn's C).
      seed: fold assignment seed.
      steps: accelerated-gradient steps per fold.
      max_dim: principal axes kept (exact when N <= max_dim).
    """
    import jax.numpy as jnp

    z = reduce(x, max_dim)
    fold = stratified_folds(labels, folds, seed)
    weights = (fold[None, :] != np.arange(folds)[:, None]).astype(np.float32)  # (F, N)
    n_fold = weights.sum(axis=1)
    l2 = 1.0 / (C * n_fold)
    z1 = np.concatenate([z, np.ones((len(z), 1), np.float32)], axis=1)       # the intercept too
    # Smoothness of the softmax loss: <= 0.5 * lambda_max(Z1' W Z1) / n (Boehning's bound), + l2.
    lip = np.array([0.5 * np.linalg.eigvalsh((z1.T * wf) @ z1 / nf)[-1] for wf, nf in zip(weights, n_fold)])
    W, b = _fold_fit(num_classes, int(steps))(
        jnp.asarray(z), jnp.asarray(labels, jnp.int32), jnp.asarray(weights),
        jnp.asarray(l2, jnp.float32), jnp.asarray(lip + l2, jnp.float32))
    W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)              # (F, r, K), (F, K)
    probs = np.empty((len(labels), num_classes), np.float64)
    for f in range(folds):
        rows = fold == f
        logits = z[rows].astype(np.float64) @ W[f] + b[f]
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        probs[rows] = e / e.sum(axis=1, keepdims=True)
    return probs


def _round_preserving_sum(v: np.ndarray) -> np.ndarray:
    floats = np.asarray(v, float)
    ints = floats.round()
    target = floats.sum().round()
    while abs(ints.sum().round() - target) > _EPS:
        diff = np.round(target - ints.sum().round())
        inc = -1 if diff < 0 else 1
        for i in np.argsort(floats - ints)[::-inc][:min(int(abs(diff)), len(v))]:
            ints[i] += inc
    return ints.astype(int)


def _rows_rounded(m: np.ndarray) -> np.ndarray:
    return np.apply_along_axis(_round_preserving_sum, 1, m).astype(int)


def confident_joint(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(K, K) calibrated confident joint: row = given label, column = likely true label."""
    n, K = probs.shape
    counts = np.bincount(labels, minlength=K)
    thresholds = np.array([probs[labels == k, k].mean() if counts[k] else 2.0 for k in range(K)])
    thresholds = np.clip(thresholds, 2 * _EPS, None)
    confident = probs >= thresholds - _EPS                        # (N, K)
    n_conf = confident.sum(axis=1)
    guess = np.where(n_conf > 1, probs.argmax(axis=1), confident.argmax(axis=1))
    keep = n_conf > 0
    cj = np.zeros((K, K), np.int64)
    np.add.at(cj, (labels[keep], guess[keep]), 1)
    np.fill_diagonal(cj, np.maximum(cj.diagonal(), 1))
    # Calibrate: each row sums to its label count, the whole to N.
    cal = (cj.T / np.clip(cj.sum(axis=1), 1e-100, None) * counts).T
    cal = cal / np.clip(cal.sum(), 1e-100, None) * counts.sum()
    return _rows_rounded(cal)


def find_label_issues(labels: np.ndarray, probs: np.ndarray, min_per_class: int = 1) -> np.ndarray:
    """(N,) bool: confident learning's label issues (cleanlab's ``prune_by_noise_rate``).

    Args:
      labels: (N,) given labels in [0, K).
      probs: (N, K) out-of-sample predicted probabilities.
      min_per_class: never prune a class below this many examples.
    """
    labels = np.asarray(labels)
    n, K = probs.shape
    prune = confident_joint(labels, probs).T.astype(float)       # (true j, given k)
    # Keep at least min_per_class per class: raise the diagonal, take it evenly from the column.
    diag = prune.diagonal().copy()
    new_diag = np.maximum(diag, min_per_class)
    per_col = np.maximum(np.count_nonzero(prune, axis=0) - 1.0, 1.0)
    prune = prune - (new_diag - diag) / per_col
    prune[prune < 0] = 0
    np.fill_diagonal(prune, new_diag)
    prune = _rows_rounded(prune)
    issues = np.zeros(n, bool)
    for k in range(K):
        rows = np.flatnonzero(labels == k)
        if len(rows) <= min_per_class:
            continue
        p = probs[rows]
        for j in range(K):
            m = prune[j, k]
            if j != k and m > 0:
                # The m examples given k that look most like j (largest p_j - p_k).
                issues[rows[np.argsort(-(p[:, j] - p[:, k]), kind="quicksort")[:m]]] = True
    # Never flag an example whose given label is (within rounding) the model's prediction.
    bumped = probs.copy()
    bumped[np.arange(n), labels] += _EPS
    issues[bumped.argmax(axis=1) == labels] = False
    return issues


def self_confidence(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(N,) the probability of the given label (cleanlab's default label-quality score; low = suspect)."""
    return probs[np.arange(len(labels)), labels]
