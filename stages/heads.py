"""Heads stage: logistic regression and a small MLP on the cached features, plus a learning curve.

Reads the features stage's output (with a ``backbone.name`` list, every backbone's folder, fused
side by side by `pipeline.heads.inputs`) and writes one `pipeline.heads.artifact.HeadsOutput`:
the fitted heads (loadable with `pipeline.heads.trained.load_head` as pure JAX functions on raw
features), ``metrics.json`` and ``predictions_<head>.json``; it prints each head's accuracy with
bootstrap 95% intervals against the plain probe.

The linear probe (`pipeline.heads.probe`) chooses C, and whether to standardise, on the val
split or, when val is small, by stratified k-fold CV over train+val (`pipeline.heads.cv`), then
refits on train+val; its fit is remembered across runs that change nothing it reads
(`pipeline.heads.memo`). The MLP (`pipeline.heads.mlp_fit`) chooses its epoch count the same way
(per-fold training runs scored on the held-out folds, or early stopping on val loss), then
refits. Each head records the score it was chosen on (``hyperparameters.selection``), which
`pipeline.heads.primary` compares to pick the answer. Nothing here imports tensorflow: rerunning
heads after a params change costs the fits, not a TF start-up.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.heads.params import HeadsParams
from pipeline.stage import Stage, StageContext


def run(ctx: StageContext) -> dict[str, Any]:
    """Fit the heads on the features stage's output; write them through `pipeline.heads.artifact`.

    Writes into ``ctx.out_dir`` a `pipeline.heads.artifact.HeadsOutput`: ``heads.json`` +
    ``logreg.npz`` + ``mlp.npz`` (see `pipeline.heads.trained.load_head`), ``metrics.json`` and
    ``predictions_<head>.json`` (the artifact module describes each).

    Returns:
      ``{"classes", "logreg_C", "standardize", "<head>_test_accuracy",
      "<head>_test_mean_per_class_accuracy"}`` (``val`` in place of ``test`` when the features
      have no test split).
    """
    from pipeline.doctor import drops
    from pipeline.heads import artifact, inputs, memo, probe
    from pipeline.heads.summary import table as end_of_run_table
    from pipeline.heads.metrics import evaluate
    from pipeline.heads.mlp_fit import fit_mlp
    from pipeline.heads.trained import fold_standardization

    p: HeadsParams = ctx.params["heads"]
    t_start = time.perf_counter()
    folders = list(ctx.input_parts.get("features") or [ctx.inputs["features"]])
    data, blocks = inputs.load_fused([Path(f) for f in folders], p.fuse)
    data = drops.apply(  # the doctor's drop list (empty unless doctor.action is on)
        ctx.inputs.get("doctor"), data, ctx.log)
    classes = data["classes"]
    K = len(classes)
    inputs.check_splits(data, classes)
    xtr, ytr, _ = data["train"]
    fused = {"blocks": blocks, "fuse": p.fuse} if len(blocks) > 1 else {}
    timings: dict[str, float] = {}
    fitted: dict[str, artifact.FittedHead] = {}
    scores: dict[str, tuple[dict, dict]] = {}  # head -> (hyperparameters, reports per split)
    predictions: dict[str, artifact.Predictions] = {}

    def record(name: str, logits_fn: Any, hyper: dict) -> None:
        reports, test_probs = evaluate(logits_fn, data, classes)
        scores[name] = ({**hyper, "seconds": timings[name]}, reports)
        if test_probs is not None:
            predictions[name] = artifact.Predictions(test_probs, data["test"][1], data["test"][2], p.top_k)

    # ---- logistic regression ---------------------------------------------------------------
    t0 = time.perf_counter()
    # The probe and the plain probe (the baseline every head is compared with) read only the
    # fields `probe_reads` marks: an MLP or learning-curve change reuses their remembered fit.
    lr = memo.fit_or_reuse(p, data, K, ctx.cache_dir, lambda: probe.fit_probes(p, data, K, ctx.log), ctx.log)
    mean, scale, z, std = lr["mean"], lr["scale"], lr["z"], lr["standardize"]
    W, b = fold_standardization(lr["W"], lr["b"], mean, scale)
    fitted["logreg"] = artifact.FittedHead("linear", {"W": W, "b": b}, {"standardize": std, **fused})
    timings["logreg"] = time.perf_counter() - t0
    record("logreg", lambda x: _linear_np(W, b, x), lr["chosen"])

    # ---- MLP ------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    mlp_info, mlp_params, mlp_apply = fit_mlp(p, z, data, K, mean, scale, lr)
    fitted["mlp"] = artifact.FittedHead("mlp", mlp_params, {"hidden": list(p.mlp.hidden), "activation": p.mlp.activation,
                                                           "skip": p.mlp.skip, "standardize": std, **fused})
    timings["mlp"] = time.perf_counter() - t0
    record("mlp", mlp_apply, mlp_info)

    # ---- the plain probe: the baseline every head is compared against on the same images ----
    base, vs_plain = _compare_with_plain_probe(lr["plain"], data,
                                               {"logreg": lambda x: _linear_np(W, b, x), "mlp": mlp_apply})

    # ---- learning curve --------------------------------------------------------------------------
    curve = None
    if p.shots and "test" in data:
        from pipeline.heads import fewshot

        t0 = time.perf_counter()
        full_pred = np.argmax(_linear_np(*lr["train_only"], z["test"]), axis=1)  # the "all" point
        curve = fewshot.learning_curve(
            xtr, ytr, data["test"][0], data["test"][1], K, p.shots, p.shot_draws, p.seed,
            lr["chosen"]["C"], std, p.knn_k, p.logreg.solver, p.logreg.max_iter,
            p.shot_tol, full_logreg_test_pred=full_pred)
        timings["learning_curve"] = time.perf_counter() - t0

    timings["total"] = time.perf_counter() - t_start
    metrics = artifact.HeadsMetrics(
        classes=classes, heads={name: artifact.HeadMetrics(hyper, reports, vs_plain[name])
                                for name, (hyper, reports) in scores.items()},
        learning_curve=curve, baseline=base, backbones=blocks, fuse=p.fuse if len(blocks) > 1 else None,
        class_weight=p.class_weight, standardize_param=p.standardize, standardize=std, seconds=timings)
    artifact.write(Path(ctx.out_dir), artifact.HeadsOutput(metrics, fitted, predictions))
    ctx.log("\n" + end_of_run_table(metrics))
    split = metrics.judged_split()
    summary = {"classes": K, "logreg_C": lr["chosen"]["C"], "standardize": std}
    if len(blocks) > 1:
        summary["backbones"] = [blk["backbone"] for blk in blocks]
    for head in ("logreg", "mlp"):
        m = metrics.heads[head].splits[split]
        summary[f"{head}_{split}_accuracy"] = round(m["accuracy"], 4)
        summary[f"{head}_{split}_mean_per_class_accuracy"] = round(m["mean_per_class_accuracy"], 4)
    return summary


def _compare_with_plain_probe(plain: dict, data: dict, logits_fns: dict) -> tuple[dict, dict]:
    """The plain probe's record, and each head's mean per-class accuracy against it (paired).

    Returns ``(baseline, {head: {"split", "difference", "ci95", "verdict"}})`` on the split the
    heads are judged on (test, else val).
    """
    from pipeline.heads.metrics import mean_per_class_accuracy, paired_difference
    from pipeline.heads.probe import PLAIN_PROBE
    from pipeline.heads.trained import fold_standardization

    split = "test" if "test" in data and len(data["test"][1]) else "val"
    x, y, _ = data[split]
    K = len(data["classes"])
    W, b = fold_standardization(plain["W"], plain["b"], plain["mean"], plain["scale"])
    pred = _linear_np(W, b, x).argmax(1)
    vs = {name: {"split": split, **paired_difference(y, fn(x).argmax(1), pred, K)} for name, fn in logits_fns.items()}
    return {"description": PLAIN_PROBE, "C": plain["C"], "select": plain["select"], "split": split,
            "accuracy": float(np.mean(pred == y)), "mean_per_class_accuracy": mean_per_class_accuracy(y, pred, K)}, vs


def _linear_np(W, b, x):
    from pipeline.heads.logreg import linear_logits

    return linear_logits(W, b, np.asarray(x, np.float32))


STAGE = Stage(
    name="heads",
    run=run,
    deps=("features", "doctor"),
    reads_part=("doctor",),
    sections=("heads",),
    version="2",
    schemas={"heads": HeadsParams},
    description="logistic regression (C by val or k-fold CV) and an MLP on the cached (fused) features",
)
