"""Multinomial logistic regression with L-BFGS: a JAX solver and the scikit-learn reference.

Both minimise scikit-learn's objective exactly, so one `C` means the same model in either:

    sum_i w_i * CE(softmax(x_i W + b), y_i) / sum_i w_i  +  ||W||^2 / (2 C sum_i w_i)

(the intercept is not penalised). With two classes scikit-learn fits one weight vector (binomial
loss); the JAX solver does the same, and `linear_logits` writes its logits as ``[0, x w + b]`` so
every head has (B, C) logits.

A regularisation path (`path`) fits the C values in increasing order, each warm-started from the
previous solution, which is how the CLIP linear-probe sweep stays cheap: going from strong to weak
regularisation, each fit starts next to its answer.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal, Sequence

import numpy as np

Solver = Literal["jax", "sklearn"]


@dataclasses.dataclass
class Path:
    """Solutions along a C path.

    Attributes:
      Cs: (P,) inverse regularisation strengths, increasing.
      W: (P, D, K') weights (K' = 1 for two classes, else K).
      b: (P, K') intercepts.
      n_iter: (P,) L-BFGS iterations each fit took.
    """

    Cs: np.ndarray
    W: np.ndarray
    b: np.ndarray
    n_iter: np.ndarray


def n_outputs(num_classes: int) -> int:
    """Weight columns for `num_classes` classes: 1 for a binary problem (as scikit-learn)."""
    return 1 if num_classes == 2 else num_classes


def linear_logits(W, b, X):
    """(B, K) logits of a fitted linear head; works on numpy and jax arrays alike.

    Args:
      W: (D, K') weights; K' = 1 means a binary head whose class-0 logit is 0.
      b: (K',) intercepts.
      X: (B, D) features.
    """
    z = X @ W + b  # (B, K')
    if W.shape[-1] == 1:
        xp = np if isinstance(z, np.ndarray) else _jnp()
        return xp.concatenate([xp.zeros_like(z), z], axis=-1)
    return z


def full_weights(W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(D, K), (K,) weights with the same logits as `linear_logits` (expands a binary head)."""
    if W.shape[-1] == 1:
        return np.concatenate([np.zeros_like(W), W], axis=1), np.concatenate([np.zeros_like(b), b])
    return W, b


def standardizer(X: np.ndarray, weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) of the rows of X (weighted); constant features get scale 1, not 0."""
    w = np.ones(len(X)) if weight is None else weight
    w = w / w.sum()
    mean = (w @ X.astype(np.float64))
    var = w @ (X.astype(np.float64) - mean) ** 2
    std = np.sqrt(var)
    scale = np.where(std > 1e-6 * max(std.max(), 1e-12), std, 1.0)
    return mean.astype(np.float32), scale.astype(np.float32)


def _jnp():
    import jax.numpy as jnp

    return jnp


# --------------------------------------------------------------------------------------- JAX

@functools.cache
def _jax_fit_fn(num_classes: int, max_iter: int, tol: float):
    """``fit(X, y, sw, C, W0, b0) -> (W, b, n_iter)``: a jitted copy, and the traceable one.

    Traced once per (classes, stopping rule, shapes), the trace kept on disk for later processes
    (`pipeline.exported`); the L-BFGS works on the flat vector ``[W.T.ravel(), b]``.

    The fit runs on centred rows, ``x - mu`` (mu: the weighted mean row), with the intercept
    ``b + mu W``: the same objective (the intercept is not penalised), so the same optimum, but
    raw post-ReLU features share a large positive mean that couples every weight with the
    intercept, so uncentred the C path takes several times the L-BFGS iterations
    (docs/benchmarks.md, "How long a heads rerun takes").
    """
    import jax
    import jax.numpy as jnp

    from pipeline.exported import persistent_jit
    from pipeline.heads import lbfgs

    def fit(X, y, sw, C, W0, b0):
        d, k_out = W0.shape
        Y = jax.nn.one_hot(y, num_classes, dtype=X.dtype)
        total = jnp.sum(sw)
        l2 = 1.0 / (C * total)
        mu = (sw @ X) / total  # centre: see the docstring
        X = X - mu
        b0 = b0 + mu @ W0

        def objective(v):
            # The weights are laid out (K', D) in v (`linear_logits` gets the transposed view;
            # XLA folds the transpose into the product): both products then run at full speed
            # on XLA's CPU backend, where the (D, K') layout's gradient X^T R ran several times
            # slower (docs/benchmarks.md).
            Wt, b = v[:d * k_out].reshape(k_out, d), v[d * k_out:]
            logits = linear_logits(Wt.T, b, X)  # (N, K)
            nll = jax.nn.logsumexp(logits, axis=1) - jnp.sum(Y * logits, axis=1)
            return jnp.sum(sw * nll) / total + 0.5 * l2 * jnp.sum(Wt * Wt)

        res = lbfgs.minimize(objective, jnp.concatenate([W0.T.ravel(), b0]), max_iter=max_iter, tol=tol)
        W = res.x[:d * k_out].reshape(k_out, d).T
        return W, res.x[d * k_out:] - mu @ W, res.n_iter

    return persistent_jit(fit, name="heads.logreg.fit", config=(num_classes, max_iter, tol)), fit


def span_basis(x: np.ndarray) -> np.ndarray | None:
    """(D, N) float32 basis of x's row span when x has fewer rows than columns, else None.

    A fit on ``x @ basis`` is the L2-penalised fit on x (``W = basis @ A``): the penalty keeps the
    optimum in the span of the rows. Any other row ``z`` scores as ``(z @ basis) @ A``, which is
    all the fitted weights can see of it.

    The basis comes from the eigenvectors of the rows' Gram matrix, ``x x^T = V L V^T``, as
    ``x^T V L^(-1/2)``: an N x N eigenproblem in float64 is cheaper than a QR of the D x N matrix
    when N < D, and the few-shot curve and the CV folds each make several (docs/benchmarks.md). Directions whose eigenvalue is below 1e-10 of the largest (rows
    that repeat, or centred rows: one direction fewer) get a zero column, which keeps the shape
    (N columns, so draws and folds batch) and adds nothing: a zero feature's weight is held at 0
    by the penalty. The other columns are orthonormal to about 1e-6.
    """
    n, d = x.shape
    if n >= d:
        return None
    x64 = np.asarray(x, np.float64)
    eigval, eigvec = np.linalg.eigh(x64 @ x64.T)
    keep = eigval > max(eigval[-1], 0.0) * 1e-10
    inv_sqrt = np.where(keep, 1.0 / np.sqrt(np.where(keep, eigval, 1.0)), 0.0)
    return (x64.T @ (eigvec * inv_sqrt)).astype(np.float32)


def path(X: np.ndarray, y: np.ndarray, Cs: Sequence[float], num_classes: int, *,
         sample_weight: np.ndarray | None = None, solver: Solver = "jax", tol: float = 1e-4,
         max_iter: int = 1000, init: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Fit one model per C, in increasing C, each warm-started from the one before.

    Args:
      X: (N, D) features (float32).
      y: (N,) int labels in [0, num_classes).
      Cs: inverse regularisation strengths (scikit-learn's C); sorted here.
      num_classes: K. Labels absent from `y` still get a column (their logit is pushed down).
      sample_weight: (N,) per-sample weights (class weights folded in), or None for ones.
      solver: ``jax`` (`pipeline.heads.lbfgs`, one jitted fit reused along the path) or
        ``sklearn`` (the reference; scipy's L-BFGS-B in float64).
      tol: stop when the largest gradient entry of the objective above is below this.
      max_iter: L-BFGS iteration cap per C.
      init: (W, b) to start the first fit from.

    With fewer rows than dimensions (few-shot fits; fused backbones) the jax solver fits on the
    rows rotated onto their span (`span_basis` Q: fit ``A`` on ``X Q``, return ``W = Q A``): the
    L2 penalty keeps the optimum in that span, so this is the same problem in N instead of D
    unknowns per class (see `pipeline.heads.cv`). The stopping rule (largest gradient entry) is
    then measured in the rotated coordinates.

    Returns:
      A `Path` with one solution per C.
    """
    Cs = np.sort(np.asarray(Cs, np.float64))
    X = np.asarray(X, np.float32)
    y = np.asarray(y, np.int32)
    sw = np.ones(len(y), np.float32) if sample_weight is None else np.asarray(sample_weight, np.float32)
    if solver == "jax":
        import jax

        fit, _ = _jax_fit_fn(num_classes, int(max_iter), float(tol))
        k_out = n_outputs(num_classes)
        W, b = init if init is not None else (np.zeros((X.shape[1], k_out), np.float32),
                                              np.zeros((k_out,), np.float32))
        basis = span_basis(X)
        if basis is not None:
            X = X @ basis                                # (N, N): the rows in their own span
            W = basis.T @ np.asarray(W, np.float32)      # a start outside the span loses nothing
        # device_put, not jnp.asarray: that compiles a small copy program per shape and process.
        W, b = (jax.device_put(np.asarray(a, np.float32)) for a in (W, b))
        X, y, sw = jax.device_put(X), jax.device_put(y), jax.device_put(sw)
        Ws, bs, its = [], [], []
        for C in Cs:  # warm start: each fit begins at the previous solution
            W, b, it = fit(X, y, sw, np.float32(C), W, b)
            Ws.append(W)
            bs.append(b)
            its.append(it)
        # Gathered on the host: a jnp.stack would compile one small program per path length,
        # and small programs miss the persistent cache (below its minimum compile time).
        Ws = np.stack([np.asarray(w) for w in Ws])
        if basis is not None:
            Ws = np.einsum("dn,pnk->pdk", basis, Ws)
        return Path(Cs, Ws, np.stack([np.asarray(v) for v in bs]), np.array([int(i) for i in its]))
    if solver == "sklearn":
        return _sklearn_path(X, y, sw, Cs, num_classes, tol, max_iter, init)
    raise ValueError(f"unknown solver {solver!r}; use 'jax' or 'sklearn'")


def _sklearn_path(X, y, sw, Cs, num_classes, tol, max_iter, init) -> Path:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    present = np.unique(y)
    model = LogisticRegression(C=float(Cs[0]), tol=tol, max_iter=max_iter, warm_start=True)
    if init is not None and len(present) == num_classes:
        # scikit-learn's warm start reads coef_ (K', D) and intercept_ (K',) from the model.
        model.coef_ = np.ascontiguousarray(np.asarray(init[0], np.float64).T)
        model.intercept_ = np.asarray(init[1], np.float64)
    Ws, bs, its = [], [], []
    for C in Cs:
        model.set_params(C=float(C))
        with warnings.catch_warnings():
            # Hitting max_iter is reported through n_iter, as the JAX solver does.
            warnings.simplefilter("ignore", ConvergenceWarning)
            # Few-shot fits (one image per class) trip a heuristic meant for regression targets.
            warnings.filterwarnings("ignore", message="The number of unique classes")
            model.fit(X, y, sample_weight=sw)
        W, b = _embed(model.coef_.T, model.intercept_, present, num_classes)
        Ws.append(W)
        bs.append(b)
        its.append(int(np.max(model.n_iter_)))
    return Path(Cs, np.stack(Ws).astype(np.float32), np.stack(bs).astype(np.float32), np.array(its))


def _embed(W, b, present, num_classes):
    """Put scikit-learn's (D, K_seen) solution into our (D, K') layout.

    A class missing from the training labels gets weight 0 and a very low intercept, so it is
    never predicted and its probability is ~0, which is what the full softmax fit tends to.
    """
    k_out = n_outputs(num_classes)
    if W.shape[1] == k_out and (k_out == 1 or len(present) == num_classes):
        return W, b
    if len(present) < 2:
        raise ValueError("logistic regression needs at least two classes in its training labels")
    if len(present) == 2 and k_out != 1:
        # scikit-learn fitted a binomial model for two seen classes of K > 2.
        W = np.concatenate([-0.5 * W, 0.5 * W], axis=1)
        b = np.concatenate([-0.5 * b, 0.5 * b])
    Wf = np.zeros((W.shape[0], k_out), W.dtype)
    bf = np.full((k_out,), -1e4, b.dtype)
    Wf[:, present] = W
    bf[present] = b
    return Wf, bf
