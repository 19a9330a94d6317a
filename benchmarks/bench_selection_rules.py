"""Candidate rules for choosing the linear probe's C and standardisation, on every tuning set.

For each tuning set (`accuracy_sets`), configuration and seed (each class halved: fit / score),
every (standardise, C) point of a wide grid is fitted the way the heads stage fits it (cold-started
L-BFGS, `pipeline.heads.cv`'s jitted path), once per 5-fold CV fold and once on the whole fitting
half; the held-out CV logits and the test logits are kept. A rule is then only a choice over that
table, so every rule is scored on exactly the same fits:

- ``oracle`` / ``oracle std``: the best test score any point (any standardised point) reaches;
- ``accuracy``: the best CV accuracy (ties: lower log loss), both scalings;
- ``accuracy, tie 0.25 SE``: the weakest penalty within 0.25 binomial SE of the best accuracy
  (the rule before `heads.logreg.criterion`, tuned on pets-tune);
- ``log loss``: the lowest pooled CV log loss, both scalings (the heads stage's default);
- ``log loss, 1 SE smaller C`` / ``larger C``: the one-standard-error rule on the log loss, towards
  stronger / weaker regularisation;
- ``... std``: the same restricted to standardised features; ``... x3``: CV scores averaged over
  three fold assignments; ``wide``: C over 1e-4..1e4 instead of 1e-3..1e3.

Printed: mean per-class test accuracy, mean ± std over seeds, per set and rule, the mean over
sets, and each rule's difference to scikit-learn's ``StandardScaler + LogisticRegressionCV``
where `bench_accuracy.py` has remembered that peer's result for the same rows.

Usage:
  python benchmarks/bench_selection_rules.py [--configs lite0 ...] [--sets ...] [--seeds 0 1 2 3 4]
      [--cache-dir cache/bench]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy_sets  # noqa: E402
from bench_accuracy import load_features, parse_config  # noqa: E402

CS = np.logspace(-4, 4, 17)
DEFAULT_GRID = slice(2, 15)  # 1e-3..1e3, the heads stage's default c_min..c_max
REPEATS = 3
FOLDS = 5


def tables(x: np.ndarray, y: np.ndarray, fit: np.ndarray, test: np.ndarray, K: int, seed: int) -> dict:
    """CV logits (2 scalings, REPEATS, C, fit rows, K) and test logits (2, C, test rows, K)."""
    from pipeline.heads import cv, logreg
    from pipeline.heads.logreg import standardizer

    xf, yf, nf = x[fit], y[fit], len(fit)
    xall = np.concatenate([xf, x[test]])
    folds = [cv.stratified_folds(yf, FOLDS, seed + 100 * r) for r in range(REPEATS)]
    masks = [f != k for f in folds for k in range(FOLDS)] + [np.ones(nf, bool)]   # + the whole half
    fits, alls, ys = [], [], []
    for std in (False, True):
        for m in masks:
            xp = xall
            if std:
                mean, scale = standardizer(xf[m])
                xp = (xall - mean) / scale
            basis = logreg.span_basis(xp[:nf][m])
            fits.append(xp[:nf][m] if basis is None else xp[:nf][m] @ basis)
            alls.append(xp if basis is None else xp @ basis)
            ys.append(yf[m])
    n, r = max(a.shape[0] for a in fits), max(a.shape[1] for a in fits)
    pad = lambda a, rows, cols: np.pad(a, ((0, rows - a.shape[0]), (0, cols - a.shape[1])))  # noqa: E731
    logits, _ = cv._cv_fn(K, 1000, 1e-4)(
        np.stack([pad(a, n, r) for a in fits]).astype(np.float32),                       # (P, n, r)
        np.stack([np.pad(v, (0, n - len(v))) for v in ys]).astype(np.int32),             # (P, n)
        np.stack([np.pad(np.ones(len(v)), (0, n - len(v))) for v in ys]).astype(np.float32),  # weights
        np.stack([pad(a, len(xall), r) for a in alls]).astype(np.float32),               # (P, N, r)
        CS.astype(np.float32))
    logits = np.asarray(logits)                                   # (problems, C, rows, K)
    per = len(masks)
    cvl = np.zeros((2, REPEATS, len(CS), nf, K), np.float32)
    for s in range(2):
        for rep in range(REPEATS):
            for k in range(FOLDS):
                held = folds[rep] == k
                cvl[s, rep][:, held] = logits[s * per + rep * FOLDS + k][:, :nf][:, held]
    test_logits = np.stack([logits[s * per + per - 1][:, nf:] for s in range(2)])
    return {"cv": cvl, "test": test_logits, "yfit": yf, "ytest": y[test]}


def nll(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row negative log likelihood of softmax(logits) (any leading axes)."""
    z = logits - logits.max(-1, keepdims=True)
    picked = np.take_along_axis(z, np.broadcast_to(y, z.shape[:-1])[..., None], -1)[..., 0]
    return np.log(np.exp(z).sum(-1)) - picked


def scores(t: dict) -> dict:
    """CV accuracy and log loss per (scaling, repeat, C); test mean per-class accuracy per (scaling, C)."""
    from pipeline.heads.metrics import mean_per_class_accuracy

    K = t["test"].shape[-1]
    per_row = nll(t["cv"], t["yfit"])                                       # (2, R, C, n)
    test = np.array([[mean_per_class_accuracy(t["ytest"], t["test"][s, c].argmax(-1), K)
                      for c in range(len(CS))] for s in range(2)])
    return {"acc": (t["cv"].argmax(-1) == t["yfit"]).mean(-1), "ll": per_row.mean(-1), "per_row": per_row,
            "test": test, "n": len(t["yfit"])}


def pick(d: dict, rule: str) -> tuple[int, int]:
    """The (scaling, C index) a rule chooses from the CV scores."""
    grid = range(len(CS)) if "wide" in rule else range(len(CS))[DEFAULT_GRID]
    scalings = [1] if " std" in rule else [0, 1]
    reps = slice(None) if "x3" in rule else slice(0, 1)
    acc, ll = d["acc"][:, reps].mean(1), d["ll"][:, reps].mean(1)          # (2, C)
    pts = [(s, c) for s in scalings for c in grid]
    if rule.startswith("accuracy, tie"):
        top = max(acc[p] for p in pts)
        band = 0.25 * np.sqrt(top * (1 - top) / d["n"])
        return max((p for p in pts if acc[p] >= top - band - 1e-12), key=lambda p: (CS[p[1]], acc[p], -ll[p]))
    if rule.startswith("accuracy"):
        return max(pts, key=lambda p: (acc[p], -ll[p]))
    best = min(pts, key=lambda p: (ll[p], -acc[p]))
    if "1 SE" not in rule:
        return best
    row = d["per_row"][best[0], reps, best[1]].mean(0)
    ok = [p for p in pts if ll[p] <= ll[best] + row.std() / np.sqrt(len(row))]
    return (min if "smaller" in rule else max)(ok, key=lambda p: CS[p[1]])


RULES = ("accuracy", "accuracy, tie 0.25 SE", "log loss", "log loss, 1 SE smaller C", "log loss, 1 SE larger C",
         "accuracy std", "log loss std", "log loss x3", "log loss wide")


def peer(cache_dir: Path, x, y, fit, test) -> float | None:
    """scikit-learn's score on these rows, as `bench_accuracy.run_sklearn` remembered it."""
    h = hashlib.sha256()
    for a in (x[fit], y[fit], x[test], y[test]):
        h.update(np.ascontiguousarray(a).tobytes())
    path = cache_dir / "bench-accuracy-sklearn" / f"{h.hexdigest()[:32]}.json"
    return json.loads(path.read_text())["mean_per_class_accuracy"] if path.is_file() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=list(accuracy_sets.SETS), choices=list(accuracy_sets.SETS))
    ap.add_argument("--configs", nargs="+", default=["lite0"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--cache-dir", type=Path, default=Path(__file__).resolve().parents[1] / "cache" / "bench")
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"mean per-class test accuracy on the held-out halves, mean ± std over seeds {args.seeds}; "
          f"(diff: minus scikit-learn's pipeline where remembered); load average {load[0]:.2f}\n")
    for name in args.configs:
        results: dict[str, dict[str, list]] = {}
        for set_name in args.sets:
            x, y, _ = load_features(args.cache_dir, set_name, parse_config(name))
            K = int(y.max()) + 1
            rows = results.setdefault(set_name, {r: [] for r in ("oracle", "oracle std", *RULES, "sklearn")})
            for seed in args.seeds:
                fit, test = accuracy_sets.split_halves(y, seed)
                memo = args.cache_dir / "bench-selection-rules" / f"{set_name}__{name}__{seed}.npz"
                if memo.is_file():
                    with np.load(memo) as f:
                        t = {k: f[k] for k in f.files}
                else:
                    t = tables(x[:, 0], y, fit, test, K, seed)
                    memo.parent.mkdir(parents=True, exist_ok=True)
                    np.savez(memo, **t)
                d = scores(t)
                rows["oracle"].append(float(d["test"].max()))
                rows["oracle std"].append(float(d["test"][1].max()))
                for rule in RULES:
                    rows[rule].append(float(d["test"][pick(d, rule)]))
                sk = peer(args.cache_dir, x, y, fit, test)
                rows["sklearn"].append(np.nan if sk is None else sk)
        print(f"configuration {name}")
        print(f"{'rule':<26}" + "".join(f"{s:>24}" for s in results) + f"{'mean':>9}")
        for rule in ("oracle", "oracle std", *RULES, "sklearn"):
            line, means = f"{rule:<26}", []
            for set_name, rows in results.items():
                v, sk = np.asarray(rows[rule]), np.asarray(rows["sklearn"])
                diff = "" if rule == "sklearn" or np.isnan(sk).any() else f" {np.mean(v - sk):+.3f}"
                line += f"{np.mean(v):>12.4f}±{np.std(v):.3f}{diff:>7}"
                means.append(np.mean(v))
            print(line + f"{np.mean(means):>9.4f}")
        print(flush=True)


if __name__ == "__main__":
    main()
