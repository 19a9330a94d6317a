"""The linear probe's protocol: choose C (and whether to standardise), then refit on train+val.

Two ways to choose, `heads.logreg.select`:

- ``val`` (the CLIP paper's protocol): a C path fitted on train, scored on val, the two
  half-steps around the best grid C tried too;
- ``cv``: stratified k-fold cross-validation over train+val (`pipeline.heads.cv`), the way
  scikit-learn's `LogisticRegressionCV` chooses; with a couple of val images per class, one val
  split picks C by noise;
- ``auto`` picks ``cv`` when val holds fewer than ``cv_below`` images per class.

``heads.standardize: auto`` tries both with and without standardisation in the same selection.

The plain probe (`fit_plain`) is the baseline every head is compared against: what a person
would write first with scikit-learn, ``make_pipeline(StandardScaler(), LogisticRegressionCV())``:
standardised features, the C with the best held-out accuracy (ties: the smaller C, as
scikit-learn's argmax over an increasing grid takes), refit on train+val. It is chosen on the same
folds (or val split) and C grid as the probe above, so where that probe already scored
standardised points it costs one refit. The heads stage reports every head's accuracy against it
with a paired bootstrap interval (`pipeline.heads.metrics.paired_difference`): a run whose answer
loses to the baseline says so. `fit_probes` fits both, what `pipeline.heads.memo` remembers.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from pipeline.heads.params import HeadsParams, LogregParams

PLAIN_PROBE = ("plain probe: standardised features, C by the best held-out accuracy on the same "
               "folds or val split, refit on train+val (scikit-learn's StandardScaler + LogisticRegressionCV)")


def class_weights(y: np.ndarray, K: int, mode: str) -> np.ndarray | None:
    """Per-sample weights N / (K_present n_c) for 'balanced' (scikit-learn's rule), else None."""
    if mode == "none":
        return None
    counts = np.bincount(y, minlength=K).astype(np.float64)
    present = counts > 0
    w = np.zeros(K)
    w[present] = len(y) / (present.sum() * counts[present])
    return w[y].astype(np.float32)


def c_grid(lp: LogregParams) -> np.ndarray:
    """The C grid: c_per_decade points per decade from c_min to c_max."""
    lo, hi = np.log10(lp.c_min), np.log10(lp.c_max)
    n = int(round((hi - lo) * lp.c_per_decade)) + 1
    return np.logspace(lo, hi, max(n, 1))


def standardize_options(p: HeadsParams) -> list[bool]:
    return [False, True] if p.standardize == "auto" else [bool(p.standardize)]


def uses_cv(p: HeadsParams, y_val: np.ndarray) -> bool:
    """Whether C is chosen by cross-validation: `select`, or for auto, val images per class."""
    if p.logreg.select != "auto":
        return p.logreg.select == "cv"
    per_class = len(y_val) / max(len(np.unique(y_val)), 1)
    return per_class < p.logreg.cv_below


def stats(x: np.ndarray, standardize: bool):
    """(mean, scale) of x's rows, or (None, None) when features are used raw."""
    if not standardize:
        return None, None
    from pipeline.heads.logreg import standardizer

    return standardizer(x)


def apply_stats(x: np.ndarray, mean, scale) -> np.ndarray:
    return x if mean is None else ((x - mean) / scale).astype(np.float32)


def as_seen(data: dict, mean, scale) -> dict:
    """split -> features as the heads see them (standardised with (mean, scale), or raw)."""
    return {s: apply_stats(v[0], mean, scale) for s, v in data.items() if s != "classes"}


def fit_logreg(p: HeadsParams, data: dict, K: int, log: Callable[[str], None] = lambda msg: None) -> dict:
    """Choose C and standardisation, refit, and return the head and the features as it sees them.

    Args:
      p: the heads params (``p.logreg``, ``p.standardize``, ``p.class_weight``, ``p.seed``).
      data: split name -> (features, labels, ids); train and val are required.
      K: number of classes.
      log: progress line sink.

    Returns:
      ``{"W", "b"}`` the final head in z's space; ``"standardize"`` (bool chosen), ``"mean"``,
      ``"scale"`` (train statistics, or None), ``"z"`` (split -> features as the heads see
      them); ``"chosen"`` (C, how it was chosen, the sweep table); ``"train_only"``: (W, b) fit
      on train alone at the chosen C.
    """
    from pipeline.heads import logreg

    lp = p.logreg
    (xtr, ytr, _), (_, yva, _) = data["train"], data["val"]
    kw = dict(solver=lp.solver, tol=lp.tol, max_iter=lp.max_iter)
    if uses_cv(p, yva):
        std, C, chosen = _choose_by_cv(p, data, K)
        mean, scale = stats(xtr, std)
        z = as_seen(data, mean, scale)
        train_only = logreg.path(z["train"], ytr, [C], K, sample_weight=class_weights(ytr, K, p.class_weight), **kw)
        W, b = train_only.W[0], train_only.b[0]
        log(f"logreg: C={C:.3g}, standardize={std} ({lp.cv_folds}-fold CV accuracy "
            f"{chosen['cv_accuracy_at_C']:.4f}, chosen by {lp.criterion}) from {len(chosen['cv_table'])} (C, standardize) points")
    else:
        options, table = [], []
        for std in standardize_options(p):
            mean, scale = stats(xtr, std)
            z = as_seen(data, mean, scale)
            found = choose_on_val(p, z, ytr, yva, K)
            table += [{"standardize": std, **r} for r in found["sweep"]]
            options.append((std, mean, scale, z, found))
        # Between scalings, the same rule as between C values (ties: the first option, raw).
        top = best_on_val([o[4]["best"] for o in options], lp.criterion)
        std, mean, scale, z, found = next(o for o in options if o[4]["best"] is top)
        C = found["best"]["C"]
        W, b = found["solutions"][C]
        # "sweep": the chosen scaling's C path (what the report plots); "val_table": every point.
        chosen = {"C": C, "select": "val", "val_accuracy_at_C": found["best"]["val_accuracy"],
                  "sweep": found["sweep"], "val_table": table}
        log(f"logreg: C={C:.3g}, standardize={std} (val accuracy {found['best']['val_accuracy']:.4f}, "
            f"chosen by {lp.criterion}) "
            f"from {len(found['sweep'])} fits")
    chosen.update({"solver": lp.solver, "refit_on_train_val": lp.refit, "standardize": std})
    # What every head reports for choosing between heads (see pipeline.heads.primary.choose_primary).
    # "n": the images the score counts (every train+val image under CV, else val's).
    chosen["selection"] = ({"by": "cv", "accuracy": chosen["cv_accuracy_at_C"], "n": len(ytr) + len(yva)}
                           if chosen["select"] == "cv"
                           else {"by": "val", "accuracy": chosen["val_accuracy_at_C"], "n": len(yva)})
    train_only = (W, b)
    if lp.refit:
        x = np.concatenate([z["train"], z["val"]])
        y = np.concatenate([ytr, yva])
        # CV scored cold-started fits (see pipeline.heads.cv): the final fit starts cold too.
        init = None if chosen["select"] == "cv" else (W, b)
        refit = logreg.path(x, y, [C], K, sample_weight=class_weights(y, K, p.class_weight), init=init, **kw)
        W, b = refit.W[0], refit.b[0]
        chosen["refit_n_iter"] = int(refit.n_iter[0])
    return {"W": W, "b": b, "chosen": chosen, "train_only": train_only, "standardize": std,
            "mean": mean, "scale": scale, "z": z}


def fit_probes(p: HeadsParams, data: dict, K: int, log: Callable[[str], None] = lambda msg: None) -> dict:
    """`fit_logreg`'s result with the plain probe (`fit_plain`, on its selection table) under ``"plain"``."""
    lr = fit_logreg(p, data, K, log)
    return {**lr, "plain": fit_plain(p, data, K, lr["chosen"])}


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
        rows = choose_on_val(p, z, ytr, yva, K)["sweep"]
    C = max(rows, key=lambda r: (r[score], -r["C"]))["C"]
    # Cold start, as the CV scored its fits and as scikit-learn's refit starts.
    fit = logreg.path(np.concatenate([z["train"], z["val"]]), y, [C], K, solver=lp.solver, tol=lp.tol,
                      max_iter=lp.max_iter, sample_weight=class_weights(y, K, p.class_weight))
    return {"W": fit.W[0], "b": fit.b[0], "mean": mean, "scale": scale, "C": float(C),
            "select": "cv" if by_cv else "val"}


def _choose_by_cv(p: HeadsParams, data: dict, K: int) -> tuple[bool, float, dict]:
    from pipeline.heads import cv

    lp = p.logreg
    x = np.concatenate([data["train"][0], data["val"][0]])
    y = np.concatenate([data["train"][1], data["val"][1]])
    # Fewer folds than the smallest class leaves that class out of some training folds: fine
    # (its column is pushed down there), as in scikit-learn's StratifiedKFold with a warning.
    folds = cv_folds(p, data, y)
    rows = cv.cv_sweep(x, y, K, c_grid(lp), standardize_options(p), folds,
                       balanced=p.class_weight == "balanced", max_iter=lp.max_iter, tol=lp.tol)
    best = cv.choose(rows, len(y), lp.cv_tie, lp.criterion)
    # "sweep": the chosen scaling's C path (what the report plots); "cv_table": every point.
    sweep = [{"C": r["C"], "cv_accuracy": r["cv_accuracy"], "cv_log_loss": r["cv_log_loss"],
              "n_iter": r["n_iter"]} for r in rows if r["standardize"] == best["standardize"]]
    chosen = {"C": best["C"], "select": "cv", "cv_folds": lp.cv_folds,
              "cv_accuracy_at_C": best["cv_accuracy"], "sweep": sweep, "cv_table": rows}
    return best["standardize"], best["C"], chosen


def cv_folds(p: HeadsParams, data: dict, y: np.ndarray) -> np.ndarray:
    """The folds of train+val (pooled in that order): by photo when views are stored as rows."""
    from pipeline.heads import cv

    ids = list(data["train"][2]) + list(data["val"][2])
    groups = cv.image_groups(ids) if len(ids) == len(y) else None
    return cv.stratified_folds(y, p.logreg.cv_folds, p.seed, groups)


def choose_on_val(p: HeadsParams, z: dict, ytr: np.ndarray, yva: np.ndarray, K: int) -> dict:
    """The CLIP sweep on one standardisation: path on train, scored on val, half-step refinement."""
    from pipeline.heads import logreg
    from pipeline.heads.metrics import log_loss, softmax

    lp = p.logreg
    sw = class_weights(ytr, K, p.class_weight)
    kw = dict(solver=lp.solver, tol=lp.tol, max_iter=lp.max_iter)

    def score(path):
        rows = []
        for i, C in enumerate(path.Cs):
            prob = softmax(logreg.linear_logits(path.W[i], path.b[i], z["val"]))
            rows.append({"C": float(C), "val_accuracy": float(np.mean(prob.argmax(1) == yva)),
                         "val_log_loss": log_loss(prob, yva), "n_iter": int(path.n_iter[i])})
        return rows

    path = logreg.path(z["train"], ytr, c_grid(lp), K, sample_weight=sw, **kw)
    sweep = score(path)
    sols = {r["C"]: (path.W[i], path.b[i]) for i, r in enumerate(sweep)}
    best = best_on_val(sweep, lp.criterion)
    h = 10 ** (0.5 / lp.c_per_decade)
    halves = [c for c in (best["C"] / h, best["C"] * h) if lp.c_min <= c <= lp.c_max]
    if lp.refine and len(sweep) > 1 and halves:
        # The half-steps around the best grid C, warm-started from the grid point below.
        i = [r["C"] for r in sweep].index(best["C"])
        start = sols[sweep[max(i - 1, 0)]["C"]]
        fine = logreg.path(z["train"], ytr, halves, K, sample_weight=sw, init=start, **kw)
        extra = score(fine)
        sols.update({r["C"]: (fine.W[j], fine.b[j]) for j, r in enumerate(extra)})
        sweep = sorted(sweep + extra, key=lambda r: r["C"])
        best = best_on_val(sweep, lp.criterion)
    return {"best": best, "sweep": sweep, "solutions": sols}


def best_on_val(sweep: list[dict], criterion: str = "log_loss") -> dict:
    """The lowest val log loss (ties: higher accuracy), or with ``criterion="accuracy"`` the
    highest val accuracy (ties: the lower val log loss; accuracy is coarse on a small val split)."""
    if criterion == "log_loss":
        return min(sweep, key=lambda r: (r["val_log_loss"], -r["val_accuracy"]))
    return max(sweep, key=lambda r: (r["val_accuracy"], -r["val_log_loss"]))

