"""The MLP head's protocol: its epoch count chosen on val or by k-fold CV (`cv_curves`), refit on
train+val, folded for raw input. The model and its compiled training run are `pipeline.heads.mlp`.

The epoch count is chosen the way the linear probe's C is (`pipeline.heads.probe`): where the
probe chose by cross-validation (few val images per class), the MLP is trained once per fold of
the same folds, every fold's skip path starting at that fold's linear probe, and the epoch count
with the best pooled held-out accuracy wins (epoch 0 is the probe alone; ties go to fewer
epochs). Otherwise early stopping on the val loss picks it (on a val split of a few photos per
class it keeps epoch 0, the probe, every time: hence CV there; see docs/accuracy.md).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.heads import mlp
from pipeline.heads.params import HeadsParams
from pipeline.heads.probe import class_weights, cv_folds


def fit_mlp(p: HeadsParams, z: dict, data: dict, K: int, mean, scale, lr: dict):
    """Train the MLP; return (info, params folded for raw features, numpy apply on raw features).

    The skip path starts at the logreg fit on train (`lr["train_only"]`, in z's space); k-fold CV
    (where the probe used it) or early stopping on val picks the epoch count (the module
    docstring says how). With ``mlp.refit`` the MLP is then retrained on
    train+val for that many epochs, its skip path starting at the final (train+val) logreg, the
    same protocol the linear probe follows: best epoch 0 then gives exactly the final logreg.
    """
    import jax

    from pipeline.heads import logreg
    from pipeline.heads.trained import fold_standardization

    mp = p.mlp
    cfg = mlp.MLPConfig(**{f.name: getattr(mp, f.name) for f in dataclasses.fields(mlp.MLPConfig)})
    ytr, yva = data["train"][1], data["val"][1]
    counts_w = class_weights(ytr, K, p.class_weight)
    val_w = None
    if counts_w is not None:
        per_class = np.zeros(K, np.float32)
        per_class[ytr] = counts_w
        val_w = per_class[yva]
    curves = None
    if lr["chosen"].get("select") == "cv":
        curves = _cv_curves(p, cfg, z, data, K, lr)
        acc = np.where(np.isnan(curves.accuracy), -np.inf, curves.accuracy)
        best = int(np.argmax(acc))  # the first maximum: ties go to fewer epochs (to the probe itself)
        selection = {"by": "cv", "accuracy": float(curves.accuracy[best]), "n": len(ytr) + len(yva)}
        res, ran = None, cfg.max_epochs
    else:
        res = mlp.train(z["train"], ytr, z["val"], yva, K, cfg, p.seed, sample_weight=counts_w,
                        val_weight=val_w, skip_init=logreg.full_weights(*lr["train_only"]))
        best, ran = res.best_epoch, res.epochs_run
        selection = {"by": "val", "accuracy": float(
            lr["chosen"]["val_accuracy_at_C"] if best == 0 and cfg.skip
            else res.val_accuracy[best - 1] if best > 0 else np.nan), "n": len(yva)}
    if mp.refit and res is not None and best == 0 and cfg.skip:
        # Nothing beat the linear probe on val: the refit would return its starting point, the
        # final logreg behind a zero residual. Build that directly instead of compiling a run.
        params = jax.tree.map(np.asarray, res.params)
        W, b = logreg.full_weights(lr["W"], lr["b"])
        params["skip"] = {"kernel": np.asarray(W), "bias": np.asarray(b)}
    elif mp.refit:
        x, y = np.concatenate([z["train"], z["val"]]), np.concatenate([ytr, yva])
        final = mlp.train(x, y, None, None, K, cfg, p.seed, sample_weight=class_weights(y, K, p.class_weight),
                          skip_init=logreg.full_weights(lr["W"], lr["b"]), epochs=best)
        params = jax.tree.map(np.asarray, final.params)
    else:
        if res is None:  # CV chose the epochs; train on train alone for that many
            res = mlp.train(z["train"], ytr, None, None, K, cfg, p.seed, sample_weight=counts_w,
                            skip_init=logreg.full_weights(*lr["train_only"]), epochs=best)
        params = jax.tree.map(np.asarray, res.params)
    for layer in ("hidden_0", "skip") if cfg.skip else ("hidden_0",):  # the layers that read x
        k, b = fold_standardization(params[layer]["kernel"], params[layer]["bias"], mean, scale)
        params[layer] = {"kernel": k, "bias": b}
    from pipeline.exported import persistent_jit

    module = mlp.make_module(K, cfg.hidden, cfg.activation, skip=cfg.skip)
    apply = persistent_jit(lambda prm, x: module.apply({"params": prm}, x), name="heads.mlp.apply",
                           config=(K, cfg.hidden, cfg.activation, cfg.skip))

    def apply_np(x):
        return np.asarray(apply(params, np.asarray(x, np.float32)))

    info = {**dataclasses.asdict(cfg), "seed": p.seed, "best_epoch": best,
            "epochs_run": ran, "refit_on_train_val": mp.refit, "selection": selection}
    if curves is not None:
        # Per epoch 1..max_epochs (the report plots "*loss*" lists against epochs from 1).
        info.update(select="cv", cv_folds=p.logreg.cv_folds, cv_log_loss=curves.log_loss[1:].tolist(),
                    cv_accuracy_per_epoch=curves.accuracy[1:].tolist())
    else:
        info.update(select="val", train_loss=res.train_loss.tolist(), val_loss=res.val_loss.tolist())
    return info, params, apply_np


def _cv_curves(p: HeadsParams, cfg, z: dict, data: dict, K: int, lr: dict):
    """The MLP's pooled held-out accuracy and log loss per epoch on the probe's CV folds."""
    from pipeline.heads import logreg

    x = np.concatenate([z["train"], z["val"]])
    y = np.concatenate([data["train"][1], data["val"][1]])
    # The probe's folds (same labels, k and seed), and its chosen C per fold as the skip paths.
    # Standardisation uses the train split's statistics in every fold (the probe's CV uses each
    # fold's own): a small leak of the held-out rows' mean and scale, not of their labels.
    folds = cv_folds(p, data, y)
    sw = class_weights(y, K, p.class_weight)
    skips = None
    if cfg.skip:
        fits = [logreg.path(x[folds != f], y[folds != f], [lr["chosen"]["C"]], K, solver=p.logreg.solver,
                            tol=p.logreg.tol, max_iter=p.logreg.max_iter,
                            sample_weight=None if sw is None else sw[folds != f])
                for f in range(int(folds.max()) + 1)]
        full = [logreg.full_weights(f.W[0], f.b[0]) for f in fits]
        skips = (np.stack([w for w, _ in full]), np.stack([b for _, b in full]))
    return cv_curves(x, y, folds, K, cfg, p.seed, skips, sample_weight=sw)


@dataclasses.dataclass
class CVCurves:
    """Held-out scores of an MLP trained k times, once per fold, epoch by epoch.

    Attributes:
      accuracy: (max_epochs + 1,) held-out accuracy pooled over folds after each epoch; entry 0
        is the starting point (with a skip path: each fold's linear probe alone; without, nan).
      log_loss: (max_epochs + 1,) the same for the log loss.
    """

    accuracy: np.ndarray
    log_loss: np.ndarray


def cv_curves(X: np.ndarray, y: np.ndarray, folds: np.ndarray, num_classes: int, cfg: mlp.MLPConfig,
              seed: int, skip_inits: tuple[np.ndarray, np.ndarray] | None = None,
              sample_weight: np.ndarray | None = None) -> CVCurves:
    """Train the MLP on every fold's training rows for ``cfg.max_epochs``, scoring held-out rows.

    One jitted call: the folds are `vmap`ped, each a copy of the training run in which the held-out
    rows keep their place with training weight 0 (so every fold has the refit's shape and
    schedule: the same steps per epoch as a fit on all rows).

    Args:
      X, y: (N, D) pooled train+val features (as the heads see them) and (N,) labels.
      folds: (N,) fold index per row (`pipeline.heads.cv.stratified_folds`).
      num_classes: K.
      cfg: the MLP config (``max_epochs`` epochs are run, no early stopping).
      seed: initialisation, shuffling and dropout seed (the same in every fold).
      skip_inits: with ``cfg.skip``, (W (k, D, K), b (k, K)): each fold's linear probe.
      sample_weight: (N,) class weights, or None.
    """
    import jax

    k = int(folds.max()) + 1
    base = np.ones(len(y), np.float32) if sample_weight is None else np.asarray(sample_weight, np.float32)
    held = np.stack([folds == f for f in range(k)]).astype(np.float32)      # (k, N)
    sw = (1.0 - held) * base
    if cfg.skip and skip_inits is None:
        raise ValueError("cfg.skip needs skip_inits, each fold's linear probe")
    if skip_inits is None:
        skip_inits = (np.zeros((k, X.shape[1], num_classes), np.float32), np.zeros((k, num_classes), np.float32))
    Xj, yj = jax.device_put(np.asarray(X, np.float32)), np.asarray(y, np.int32)
    fn = mlp.cv_fn(cfg, num_classes, X.shape[0], X.shape[1])
    *_, va, acc = fn(Xj, yj, np.asarray(sw), Xj, yj, np.asarray(held), np.uint32(seed),
                     tuple(np.asarray(a, np.float32) for a in skip_inits),
                     np.int32(cfg.max_epochs), np.asarray(True), mlp.traced(cfg))
    share = held.sum(1) / held.sum()                                         # pool the folds by size
    accuracy, log_loss = share @ np.asarray(acc), share @ np.asarray(va)
    start_acc, start_ll = np.nan, np.nan
    if cfg.skip:
        from pipeline.heads.metrics import softmax

        W, b = (np.asarray(a, np.float64) for a in skip_inits)
        logits = np.einsum("nd,kdc->knc", np.asarray(X, np.float64), W) + b[:, None, :]   # (k, N, K)
        prob = softmax(logits.reshape(-1, num_classes)).reshape(logits.shape)
        p_true = np.clip(prob[:, np.arange(len(y)), y], 1e-15, 1.0)
        start_acc = float(np.sum(held * (prob.argmax(-1) == y)) / held.sum())
        start_ll = float(-np.sum(held * np.log(p_true)) / held.sum())
    return CVCurves(np.concatenate([[start_acc], accuracy]), np.concatenate([[start_ll], log_loss]))
