"""The MLP head on cached features: early stopping on val, refit on train+val, folded for raw input."""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.heads.params import HeadsParams
from pipeline.heads.probe import class_weights


def fit_mlp(p: HeadsParams, z: dict, data: dict, K: int, mean, scale, lr: dict):
    """Train the MLP; return (info, params folded for raw features, numpy apply on raw features).

    The skip path starts at the logreg fit on train (`lr["train_only"]`, in z's space); early
    stopping on val picks the epoch count. With ``mlp.refit`` the MLP is then retrained on
    train+val for that many epochs, its skip path starting at the final (train+val) logreg, the
    same protocol the linear probe follows: best epoch 0 then gives exactly the final logreg.
    """
    import jax

    from pipeline.heads import logreg, mlp
    from pipeline.heads.trained import fold_standardization

    mp = p.mlp
    cfg = mlp.MLPConfig(hidden=tuple(mp.hidden), activation=mp.activation, dropout=mp.dropout,
                        learning_rate=mp.learning_rate, weight_decay=mp.weight_decay,
                        label_smoothing=mp.label_smoothing, schedule=mp.schedule,
                        warmup_epochs=mp.warmup_epochs, batch_size=mp.batch_size,
                        max_epochs=mp.max_epochs, patience=mp.patience, skip=mp.skip)
    ytr, yva = data["train"][1], data["val"][1]
    counts_w = class_weights(ytr, K, p.class_weight)
    val_w = None
    if counts_w is not None:
        per_class = np.zeros(K, np.float32)
        per_class[ytr] = counts_w
        val_w = per_class[yva]
    res = mlp.train(z["train"], ytr, z["val"], yva, K, cfg, p.seed, sample_weight=counts_w,
                    val_weight=val_w, skip_init=logreg.full_weights(*lr["train_only"]))
    params = jax.tree.map(np.asarray, res.params)
    if mp.refit and res.best_epoch == 0 and cfg.skip:
        # Nothing beat the linear probe on val: the refit would return its starting point, the
        # final logreg behind a zero residual. Build that directly instead of compiling a run.
        W, b = logreg.full_weights(lr["W"], lr["b"])
        params["skip"] = {"kernel": np.asarray(W), "bias": np.asarray(b)}
    elif mp.refit:
        x, y = np.concatenate([z["train"], z["val"]]), np.concatenate([ytr, yva])
        final = mlp.train(x, y, None, None, K, cfg, p.seed, sample_weight=class_weights(y, K, p.class_weight),
                          skip_init=logreg.full_weights(lr["W"], lr["b"]), epochs=res.best_epoch)
        params = jax.tree.map(np.asarray, final.params)
    for layer in ("hidden_0", "skip") if cfg.skip else ("hidden_0",):  # the layers that read x
        k, b = fold_standardization(params[layer]["kernel"], params[layer]["bias"], mean, scale)
        params[layer] = {"kernel": k, "bias": b}
    from pipeline.exported import persistent_jit

    module = mlp.make_module(K, cfg.hidden, cfg.activation, skip=cfg.skip)
    apply = persistent_jit(lambda prm, x: module.apply({"params": prm}, x), name="heads.mlp.apply",
                           config=(K, cfg.hidden, cfg.activation, cfg.skip))

    def apply_np(x):
        return np.asarray(apply(params, np.asarray(x, np.float32)))

    info = {**dataclasses.asdict(cfg), "seed": p.seed, "best_epoch": res.best_epoch,
            "epochs_run": res.epochs_run, "train_loss": res.train_loss.tolist(),
            "val_loss": res.val_loss.tolist(), "refit_on_train_val": mp.refit}
    return info, params, apply_np
