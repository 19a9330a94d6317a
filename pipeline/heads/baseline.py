"""The plain probe: the 20-line baseline every run is compared against.

What a person would write first with scikit-learn, ``make_pipeline(StandardScaler(),
LogisticRegressionCV())``: standardised features, the C with the best held-out accuracy (ties: the
smaller C, as scikit-learn's argmax over an increasing grid takes), refit on train+val. It is
chosen on the same folds (or val split) and C grid as the pipeline's own probe, so where that
probe already scored standardised points the baseline costs one refit. The heads stage reports
every head's test accuracy against it with a paired bootstrap interval
(`pipeline.heads.metrics.paired_difference`): a run whose answer loses to the baseline says so.
"""

from __future__ import annotations

import numpy as np

from pipeline.heads.params import HeadsParams

DESCRIPTION = ("plain probe: standardised features, C by the best held-out accuracy on the same "
               "folds or val split, refit on train+val (scikit-learn's StandardScaler + LogisticRegressionCV)")


def fit_plain(p: HeadsParams, data: dict, K: int, chosen: dict) -> dict:
    """Fit the plain probe.

    Args:
      p: the heads params (its C grid, folds, solver, class weights).
      data: split name -> (features, labels, ids), raw.
      K: number of classes.
      chosen: the pipeline probe's selection record (`probe.fit_logreg`'s ``chosen``): its
        ``cv_table`` or ``val_table`` already scores every (standardise, C) point it tried.

    Returns:
      ``{"W", "b"}`` on standardised features, ``"mean"``, ``"scale"`` (train statistics),
      ``"C"`` and ``"select"`` (``cv`` or ``val``).
    """
    from pipeline.heads import cv, logreg
    from pipeline.heads.probe import as_seen, c_grid, class_weights, cv_folds, stats

    lp = p.logreg
    (xtr, ytr, _), (_, yva, _) = data["train"], data["val"]
    y = np.concatenate([ytr, yva])
    by_cv = chosen["select"] == "cv"
    rows = [r for r in chosen["cv_table" if by_cv else "val_table"] if r["standardize"]]
    score = "cv_accuracy" if by_cv else "val_accuracy"
    if not rows and by_cv:  # standardize: false never scored standardised points: sweep them
        x = np.concatenate([data["train"][0], data["val"][0]])
        rows = cv.cv_sweep(x, y, K, c_grid(lp), [True], cv_folds(p, data, y),
                           balanced=p.class_weight == "balanced", max_iter=lp.max_iter, tol=lp.tol)
    mean, scale = stats(xtr, True)
    z = as_seen({"train": data["train"], "val": data["val"]}, mean, scale)
    if not rows:  # the val path with standardize: false
        from pipeline.heads.probe import choose_on_val

        rows = choose_on_val(p, z, ytr, yva, K)["sweep"]
    C = max(rows, key=lambda r: (r[score], -r["C"]))["C"]
    # Cold start, as the CV scored its fits and as scikit-learn's refit starts.
    fit = logreg.path(np.concatenate([z["train"], z["val"]]), y, [C], K, solver=lp.solver, tol=lp.tol,
                      max_iter=lp.max_iter, sample_weight=class_weights(y, K, p.class_weight))
    return {"W": fit.W[0], "b": fit.b[0], "mean": mean, "scale": scale, "C": float(C),
            "select": "cv" if by_cv else "val"}
