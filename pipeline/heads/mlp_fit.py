"""The MLP head on cached features: its epoch count chosen on val or by k-fold CV, refit on
train+val, folded for raw input.

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

    from pipeline.heads import logreg, mlp
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
    from pipeline.heads import logreg, mlp

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
    return mlp.cv_curves(x, y, folds, K, cfg, p.seed, skips, sample_weight=sw)
