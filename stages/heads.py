"""Heads stage: logistic regression and a small MLP on the cached features, plus a learning curve.

Reads the features stage's output (`classes.json`, `<split>/features.npy|labels.npy|ids.json`),
writes the fitted heads (loadable with `load_head` as pure JAX functions on raw features),
`metrics.json`, `predictions_<head>.json`, and prints a table of test accuracy per head.

The linear probe follows the CLIP paper's protocol: L-BFGS, C swept on a log grid, chosen on the
val split, then refit on train+val at that C. The MLP trains on train with early stopping on val
loss and keeps the best epoch. Nothing here imports tensorflow: rerunning heads after a params
change costs the fits, not a TF start-up.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np

from pipeline.errors import UserError
from pipeline.heads.trained import TrainedHead, load_head
from pipeline.params import ParamsError, spec
from pipeline.stage import Stage, StageContext

__all__ = ["HeadsParams", "LogregParams", "MLPParams", "STAGE", "TrainedHead", "load_head", "run"]


@dataclasses.dataclass(frozen=True)
class LogregParams:
    """``heads.logreg``: the linear probe (CLIP protocol)."""

    solver: Literal["jax", "sklearn"] = spec("jax", help="L-BFGS: jax (pipeline.heads.lbfgs, jitted, float32) or sklearn (reference, float64)")
    c_min: float = spec(1e-3, min=0, min_exclusive=True, help="smallest C (inverse L2 strength, scikit-learn's C) of the sweep")
    c_max: float = spec(1e3, min=0, min_exclusive=True, help="largest C of the sweep")
    c_per_decade: int = spec(2, min=1, max=16, help="grid points per decade between c_min and c_max")
    refine: bool = spec(True, help="also try the two half-steps around the best grid C")
    refit: bool = spec(True, help="refit on train+val at the chosen C (CLIP protocol)")
    max_iter: int = spec(1000, min=1, help="L-BFGS iterations per fit")
    tol: float = spec(1e-4, min=0, min_exclusive=True, help="stop when the largest gradient entry is below this")

    def validate(self) -> None:
        if self.c_max < self.c_min:
            raise ParamsError(f"c_max: {self.c_max!r} is below c_min {self.c_min!r}; "
                              "c_max must be >= c_min.")


@dataclasses.dataclass(frozen=True)
class MLPParams:
    """``heads.mlp``: a small MLP trained with AdamW and early stopping on val loss."""

    hidden: tuple[int, ...] = spec((256,), min=1, min_len=1, help="hidden layer widths, e.g. [512] or [1024, 512]")
    activation: Literal["relu", "gelu"] = spec("gelu", help="hidden activation")
    dropout: float = spec(0.5, min=0.0, max=0.95, help="dropout after each hidden layer")
    learning_rate: float = spec(1e-3, min=0, min_exclusive=True, help="peak AdamW learning rate")
    weight_decay: float = spec(1e-4, min=0.0, help="AdamW decoupled weight decay")
    label_smoothing: float = spec(0.1, min=0.0, max=0.99, help="label smoothing of the training loss")
    schedule: Literal["cosine", "constant"] = spec("cosine", help="learning-rate schedule after warm-up")
    warmup_epochs: int = spec(1, min=0, help="linear warm-up epochs")
    batch_size: int = spec(256, min=1, help="minibatch size")
    max_epochs: int = spec(40, min=1, help="epoch cap (the cosine schedule spans it)")
    patience: int = spec(5, min=1, help="stop after this many epochs without a lower val loss")
    skip: bool = spec(True, help="add the fitted logreg as a fixed linear skip path; the MLP learns a residual")
    refit: bool = spec(True, help="retrain on train+val for the best epoch count (from the refit logreg)")


@dataclasses.dataclass(frozen=True)
class HeadsParams:
    """``heads``: what the heads stage fits and reports."""

    standardize: bool = spec(False, help="standardise features with train-split mean/std (folded into saved heads); off: measured better on real photos")
    class_weight: Literal["none", "balanced"] = spec("none", help="'balanced' weights each class by N / (K n_c)")
    seed: int = spec(0, min=0, help="seed for the MLP and the learning-curve draws")
    shots: tuple[Union[int, Literal["all"]], ...] = spec((1, 2, 5, 10, 20, "all"), min=1,
                                                         help="learning curve: train images per class ('all' = whole split); [] to skip")
    shot_draws: int = spec(3, min=1, help="seeded draws averaged per learning-curve point")
    shot_tol: float = spec(1e-3, min=0, min_exclusive=True,
                           help="L-BFGS tolerance of the learning-curve fits (draw-to-draw spread dwarfs it)")
    knn_k: int = spec(10, min=1, help="neighbours of the kNN baseline in the learning curve")
    top_k: int = spec(5, min=1, help="class probabilities kept per test image in predictions_<head>.json")
    logreg: LogregParams = spec(default_factory=LogregParams)
    mlp: MLPParams = spec(default_factory=MLPParams)


SPLITS = ("train", "val", "test")


def run(ctx: StageContext) -> dict[str, Any]:
    """Fit the heads on the features stage's output and write metrics, predictions and heads.

    Writes into ``ctx.out_dir``: ``heads.json`` + ``logreg.npz`` + ``mlp.npz`` (see `load_head`),
    ``metrics.json`` (per head and split: accuracy, mean per-class accuracy, log loss, per-class
    precision/recall/F1, confusion matrix; chosen hyperparameters with the C sweep; the learning
    curve; seconds per phase) and ``predictions_<head>.json`` (per test image: id, true and
    predicted class, their probabilities, top-k classes).

    Returns:
      ``{"classes", "logreg_C", "<head>_test_accuracy", "<head>_test_mean_per_class_accuracy"}``
      (``val`` in place of ``test`` when the features have no test split).
    """
    p: HeadsParams = ctx.params["heads"]
    t_start = time.perf_counter()
    data = _load_features(Path(ctx.inputs["features"]))
    from pipeline.doctor import drops  # the doctor's drop list (empty unless doctor.action is on)

    data = drops.apply(ctx.inputs.get("doctor"), data, ctx.log)
    classes = data["classes"]
    K = len(classes)
    _check_splits(data, classes)
    (xtr, ytr, _), (xva, yva, _) = data["train"], data["val"]
    mean, scale = _stats(xtr, p.standardize)
    z = {s: _apply(data[s][0], mean, scale) for s in SPLITS if s in data}  # standardised copies
    out = Path(ctx.out_dir)
    metrics: dict[str, Any] = {"classes": classes, "standardize": p.standardize,
                               "class_weight": p.class_weight, "heads": {}}
    timings: dict[str, float] = {}

    # ---- logistic regression ---------------------------------------------------------------
    t0 = time.perf_counter()
    lr = fit_logreg(p, z, data, K, ctx.log)
    W, b = _fold_linear(lr["W"], lr["b"], mean, scale)
    _save("logreg", "linear", {"W": W, "b": b}, {"standardize": p.standardize}, classes, out)
    timings["logreg"] = time.perf_counter() - t0
    metrics["heads"]["logreg"] = _evaluate(lambda x: _linear_np(W, b, x), data, classes, out, "logreg",
                                           p.top_k, {**lr["chosen"], "seconds": timings["logreg"]})

    # ---- MLP ------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    mlp_info, mlp_params, mlp_apply = _fit_mlp(p, z, data, K, mean, scale, lr)
    _save("mlp", "mlp", mlp_params, {"hidden": list(p.mlp.hidden), "activation": p.mlp.activation,
                                     "skip": p.mlp.skip, "standardize": p.standardize}, classes, out)
    timings["mlp"] = time.perf_counter() - t0
    metrics["heads"]["mlp"] = _evaluate(mlp_apply, data, classes, out, "mlp", p.top_k,
                                        {**mlp_info, "seconds": timings["mlp"]})

    # ---- learning curve --------------------------------------------------------------------------
    if p.shots and "test" in data:
        from pipeline.heads import fewshot

        t0 = time.perf_counter()
        full_pred = np.argmax(_linear_np(*lr["train_only"], z["test"]), axis=1)  # the "all" point
        metrics["learning_curve"] = fewshot.learning_curve(
            xtr, ytr, data["test"][0], data["test"][1], K, p.shots, p.shot_draws, p.seed,
            lr["chosen"]["C"], p.standardize, p.knn_k, p.logreg.solver, p.logreg.max_iter,
            p.shot_tol, full_logreg_test_pred=full_pred)
        timings["learning_curve"] = time.perf_counter() - t0

    timings["total"] = time.perf_counter() - t_start
    metrics["seconds"] = timings
    (out / "metrics.json").write_text(json.dumps(_finite(metrics), indent=1))
    ctx.log("\n" + _table(metrics, timings))
    split = "test" if "test" in metrics["heads"]["logreg"] else "val"
    summary = {"classes": K, "logreg_C": lr["chosen"]["C"]}
    for head in ("logreg", "mlp"):
        m = metrics["heads"][head][split]
        summary[f"{head}_{split}_accuracy"] = round(m["accuracy"], 4)
        summary[f"{head}_{split}_mean_per_class_accuracy"] = round(m["mean_per_class_accuracy"], 4)
    return summary


STAGE = Stage(
    name="heads",
    run=run,
    deps=("features", "doctor"),
    reads_part=("doctor",),
    sections=("heads",),
    version="1",
    schemas={"heads": HeadsParams},
    description="logistic regression (CLIP linear probe) and an MLP on the cached features",
)


# --------------------------------------------------------------------------------- reading inputs

def _load_features(features_dir: Path) -> dict[str, Any]:
    """classes and (features float32, labels, ids) for every split present."""
    from stages.features import load_split

    classes_path = features_dir / "classes.json"
    if not classes_path.exists():
        raise UserError(f"{classes_path} not found: {features_dir} is not a features stage output.")
    data: dict[str, Any] = {"classes": json.loads(classes_path.read_text())}
    for split in SPLITS:
        if (features_dir / split / "features.npy").exists():
            x, y, ids = load_split(features_dir, split)
            data[split] = (np.asarray(x, np.float32), np.asarray(y, np.int64), list(ids))
    return data


def _check_splits(data: dict, classes: list[str]) -> None:
    for split in ("train", "val"):
        if split not in data or len(data[split][1]) == 0:
            raise UserError(f"the features output has no {split} split; the heads stage needs train "
                            "(to fit) and val (to choose C and stop the MLP). Set data.val_fraction "
                            "> 0 (or give the source a val split).")
    for split, (x, y, ids) in ((s, data[s]) for s in SPLITS if s in data):
        if len(x) != len(y) or len(y) != len(ids):
            raise UserError(f"features/{split}: {len(x)} features, {len(y)} labels, {len(ids)} ids; "
                            "rerun the features stage (--force features).")
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise UserError(f"features/{split}/labels.npy has labels outside 0..{len(classes) - 1} "
                            f"(classes.json lists {len(classes)} classes); rerun the features stage.")
    for split in ("train", "val"):
        present = np.unique(data[split][1])
        if len(present) < 2:
            raise UserError(f"the {split} split has only one class ({classes[int(present[0])]!r}); "
                            f"the heads need at least two in train and val. Check that data.path "
                            f"(or the tfds source) has two or more classes, and raise "
                            f"data.val_fraction if val is too small to hold them.")


# --------------------------------------------------------------------------------- fitting

def _stats(x: np.ndarray, standardize: bool):
    if not standardize:
        return None, None
    from pipeline.heads.fewshot import standardizer

    return standardizer(x)


def _apply(x: np.ndarray, mean, scale) -> np.ndarray:
    return x if mean is None else ((x - mean) / scale).astype(np.float32)


def _class_weights(y: np.ndarray, K: int, mode: str) -> np.ndarray | None:
    """Per-sample weights N / (K_present n_c) for 'balanced' (scikit-learn's rule), else None."""
    if mode == "none":
        return None
    counts = np.bincount(y, minlength=K).astype(np.float64)
    present = counts > 0
    w = np.zeros(K)
    w[present] = len(y) / (present.sum() * counts[present])
    return w[y].astype(np.float32)


def _c_grid(lp: LogregParams) -> np.ndarray:
    lo, hi = np.log10(lp.c_min), np.log10(lp.c_max)
    n = int(round((hi - lo) * lp.c_per_decade)) + 1
    return np.logspace(lo, hi, max(n, 1))


def fit_logreg(p: HeadsParams, z: dict, data: dict, K: int, log=lambda msg: None) -> dict:
    """The linear probe's whole protocol: sweep C on train, choose on val, refit on train+val.

    Args:
      p: the heads params (``p.logreg`` and ``p.class_weight`` are read).
      z: split name -> (N, D) features as the heads see them (standardised or not).
      data: split name -> (features, labels, ids), for the labels.
      K: number of classes.
      log: progress line sink.

    Returns:
      ``{"W", "b"}`` the final head (in z's space), ``"chosen"`` (C, the sweep table, ...) and
      ``"train_only"``: (W, b) fit on train alone at the chosen C.
    """
    from pipeline.heads import logreg
    from pipeline.heads.metrics import log_loss, softmax

    lp = p.logreg
    ytr, yva = data["train"][1], data["val"][1]
    sw = _class_weights(ytr, K, p.class_weight)
    kw = dict(solver=lp.solver, tol=lp.tol, max_iter=lp.max_iter)

    def score(path):
        rows = []
        for i, C in enumerate(path.Cs):
            prob = softmax(logreg.linear_logits(path.W[i], path.b[i], z["val"]))
            rows.append({"C": float(C), "val_accuracy": float(np.mean(prob.argmax(1) == yva)),
                         "val_log_loss": log_loss(prob, yva), "n_iter": int(path.n_iter[i])})
        return rows

    path = logreg.path(z["train"], ytr, _c_grid(lp), K, sample_weight=sw, **kw)
    sweep = score(path)
    sols = {r["C"]: (path.W[i], path.b[i]) for i, r in enumerate(sweep)}
    best = _best(sweep)
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
        best = _best(sweep)
    C = best["C"]
    W, b = sols[C]
    chosen = {"C": C, "solver": lp.solver, "refit_on_train_val": lp.refit,
              "val_accuracy_at_C": best["val_accuracy"], "sweep": sweep}
    train_only = (W, b)
    if lp.refit:
        x = np.concatenate([z["train"], z["val"]])
        y = np.concatenate([ytr, yva])
        refit = logreg.path(x, y, [C], K, sample_weight=_class_weights(y, K, p.class_weight),
                            init=(W, b), **kw)
        W, b = refit.W[0], refit.b[0]
        chosen["refit_n_iter"] = int(refit.n_iter[0])
    log(f"logreg: C={C:.3g} (val accuracy {best['val_accuracy']:.4f}) from {len(sweep)} fits")
    return {"W": W, "b": b, "chosen": chosen, "train_only": train_only}


def _best(sweep: list[dict]) -> dict:
    """Highest val accuracy; ties go to the lower val log loss (accuracy is coarse on small val)."""
    return max(sweep, key=lambda r: (r["val_accuracy"], -r["val_log_loss"]))


def _fold_linear(W, b, mean, scale):
    from pipeline.heads.trained import fold_standardization

    return fold_standardization(W, b, mean, scale)


def _linear_np(W, b, x):
    from pipeline.heads.logreg import linear_logits

    return linear_logits(W, b, np.asarray(x, np.float32))


def _fit_mlp(p: HeadsParams, z: dict, data: dict, K: int, mean, scale, lr: dict):
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
    counts_w = _class_weights(ytr, K, p.class_weight)
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
        final = mlp.train(x, y, None, None, K, cfg, p.seed, sample_weight=_class_weights(y, K, p.class_weight),
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


# --------------------------------------------------------------------------------- outputs

def _save(name, kind, params, config, classes, out: Path) -> None:
    from pipeline.heads.trained import save_head

    save_head(out, name, kind, params, config, classes)


def _evaluate(logits_fn, data: dict, classes: list[str], out: Path, head: str, top_k: int,
              hyper: dict) -> dict:
    """Metrics per split for a head taking raw features; writes predictions_<head>.json (test)."""
    from pipeline.heads.metrics import classification_report, softmax

    result: dict[str, Any] = {"hyperparameters": hyper}
    for split in SPLITS:
        if split not in data or len(data[split][1]) == 0:
            continue
        x, y, ids = data[split]
        probs = softmax(logits_fn(x))
        result[split] = classification_report(probs, y, classes)
        if split == "test":
            _write_predictions(out / f"predictions_{head}.json", probs, y, ids, classes, top_k)
    return result


def _write_predictions(path: Path, probs: np.ndarray, y: np.ndarray, ids: list, classes: list[str],
                       top_k: int) -> None:
    """Per test image: id, true and predicted class, their probabilities, and the top-k classes."""
    k = min(top_k, len(classes))
    top = np.argsort(-probs, axis=1)[:, :k]
    pred = top[:, 0]
    rows = [{"id": ids[i], "true": classes[y[i]], "pred": classes[pred[i]],
             "p_pred": round(float(probs[i, pred[i]]), 6), "p_true": round(float(probs[i, y[i]]), 6),
             "top": [[classes[j], round(float(probs[i, j]), 6)] for j in top[i]]}
            for i in range(len(y))]
    path.write_text(json.dumps({"classes": classes, "top_k": k, "predictions": rows}, indent=0))


def _finite(obj):
    """JSON without NaN/Infinity (not valid JSON): those become null."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _table(metrics: dict, timings: dict) -> str:
    """The end-of-stage table as text (rich), for ctx.log."""
    from rich.console import Console
    from rich.table import Table

    split = "test" if "test" in metrics["heads"]["logreg"] else "val"
    table = Table(title=f"heads ({split} split)")
    for col in ("head", "accuracy", "mean per-class acc.", "log loss", "seconds"):
        table.add_column(col, justify="left" if col == "head" else "right")
    for head in ("logreg", "mlp"):
        m = metrics["heads"][head][split]
        table.add_row(head, f"{m['accuracy']:.4f}", f"{m['mean_per_class_accuracy']:.4f}",
                      f"{m['log_loss']:.4f}", f"{timings[head]:.2f}")
    buf = io.StringIO()
    console = Console(file=buf, width=100, force_terminal=False)
    console.print(table)
    if metrics.get("learning_curve"):
        curve = Table(title=f"learning curve (test accuracy, mean of draws)")
        for col in ("images/class", "n train", "logreg", "kNN"):
            curve.add_column(col, justify="right")
        for row in metrics["learning_curve"]:
            curve.add_row(str(row["shots"]), f"{row['n_train']:.0f}", f"{row['logreg_accuracy']:.4f}",
                          f"{row['knn_accuracy']:.4f}")
        console.print(curve)
    return buf.getvalue().rstrip()
