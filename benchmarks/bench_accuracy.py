"""Accuracy on real photos: the pipeline's answer against a 20-line scikit-learn probe, same features.

For every tuning set (`accuracy_sets.SETS`: pets, cats-dogs, food, textures, cells; tuning data,
never a reported held-out result) and configuration, the features come from the pipeline's own
features stage. For every seed, each class's images are halved at random: one half to fit on
(train+val, with a 10 % stratified val split carved as the data stage does), the other to score.
On the same rows:

- ``ours primary``: the head the pipeline answers with (the heads' selection scores, as the
  report and `predict` choose it), after the heads stage's own protocol (`probe.fit_logreg`, `mlp_fit.fit_mlp`);
  ``ours logreg`` and ``ours mlp`` are the two heads;
- ``plain probe``: the baseline the heads stage reports beside the primary head
  (`pipeline.heads.probe.fit_plain`: standardised features, C by k-fold CV accuracy, refit);
- ``sklearn``: ``make_pipeline(StandardScaler(), LogisticRegressionCV(max_iter=5000))``, the
  issue's 20-line script (5 stratified folds, 10 Cs from 1e-4 to 1e4, accuracy, refit).

The metric is mean per-class accuracy on the scoring half, mean ± std over seeds. ``diff`` is
ours primary minus sklearn with its standard error over seeds (paired); win / tie / loss counts a
set as a win when the mean difference is above one standard error, a loss when below minus one.

Usage:
  python benchmarks/bench_accuracy.py [--sets pets food ...] [--configs lite0 lite0@288 ...]
      [--seeds 0 1 2 3 4] [--cache-dir cache/bench] [--no-mlp] [--no-sklearn]
      [--heads logreg.criterion=accuracy ...] [--val-fraction 0.4]

Configuration names: backbones ``lite0``, ``lite2``, ``lite0+1+2`` (fused, per-backbone L2;
``raw`` fuses unscaled); ``@N`` sets ``features.image_size``; ``flip``/``flip_crops`` add
test-time views, averaged (``mean``, the default) or kept as rows (``rows``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy_sets  # noqa: E402

DEFAULT_CONFIGS = ("lite0",)


def parse_config(name: str) -> dict:
    """``"lite0+1+2@288 flip rows raw"`` -> backbones, image size, augment, reduce, fuse."""
    words = name.split()
    nets, _, size = words[0].partition("@")
    tail = nets.removeprefix("lite").split("+")
    backbones = [f"efficientnet_lite{t}" for t in tail]
    augment = next((w for w in words[1:] if w in ("flip", "crops", "flip_crops")), "none")
    reduce = "rows" if "rows" in words[1:] else "mean"
    return {"backbones": backbones, "image_size": int(size) if size else None, "augment": augment,
            "reduce": reduce, "fuse": "none" if "raw" in words[1:] or len(backbones) == 1 else "l2"}


def load_features(cache_dir: Path, set_name: str, cfg: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """(rows (images, views, D) fused as the heads fuse them, labels per image, views)."""
    from pipeline.heads.inputs import normalize_block

    photos = accuracy_sets.photo_folder(cache_dir, set_name)
    parts = [accuracy_sets.features(cache_dir, photos, b, cfg["augment"], cfg["image_size"])
             for b in cfg["backbones"]]
    y, views = parts[0][1], parts[0][3]
    assert all(p[2] == parts[0][2] for p in parts), "backbones saw different images"
    x = np.concatenate([normalize_block(p[0], cfg["fuse"]) for p in parts], axis=1)
    return x.reshape(-1, views, x.shape[1]), y, views


def heads_overrides(pairs: list[str]) -> dict:
    """``["logreg.criterion=accuracy", "standardize=true"]`` -> a nested heads section (YAML values)."""
    import yaml

    out: dict = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        *parents, leaf = key.split(".")
        node = out
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = yaml.safe_load(value)
    return out


def run_ours(xfit, yfit, xtest, ytest, K: int, seed: int, mlp: bool, overrides: dict | None = None,
             val_fraction: float = 0.1) -> dict:
    """The heads stage's protocol on (images, views, D) rows; test probabilities averaged over views."""
    from pipeline.heads import probe
    from pipeline.heads.logreg import linear_logits
    from pipeline.heads.metrics import mean_per_class_accuracy, softmax
    from pipeline.heads.params import HeadsParams
    from pipeline.params import parse_section

    p = parse_section(HeadsParams, {**(overrides or {}), "seed": seed}, "heads")
    val = accuracy_sets.carve_val(yfit, seed, val_fraction)
    v = xfit.shape[1]
    rep = lambda a: np.repeat(a, v)  # noqa: E731 -- labels per row
    flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
    # Row ids as the features stage writes them (<photo>#<view>): CV folds keep a photo's views together.
    ids = lambda idx: [f"{i}#{j}" for i in idx for j in range(v)]  # noqa: E731
    data = {"classes": list(range(K)),
            "train": (flat(xfit[~val]), rep(yfit[~val]), ids(np.flatnonzero(~val))),
            "val": (flat(xfit[val]), rep(yfit[val]), ids(np.flatnonzero(val))),
            "test": (flat(xtest), rep(ytest), [])}

    def score(logits):
        probs = softmax(logits).reshape(len(ytest), v, K).mean(1)
        return mean_per_class_accuracy(ytest, probs.argmax(1), K)

    lr = probe.fit_logreg(p, data, K)
    out = {"logreg": score(linear_logits(lr["W"], lr["b"], lr["z"]["test"])), "C": lr["chosen"]["C"],
           "std": lr["standardize"], "select": lr["chosen"]["select"]}
    plain = probe.fit_plain(p, data, K, lr["chosen"])
    out["plain"] = score(linear_logits(plain["W"], plain["b"], probe.apply_stats(data["test"][0], plain["mean"], plain["scale"])))
    selections = {"logreg": lr["chosen"]["selection"]}
    if mlp:
        from pipeline.heads.mlp_fit import fit_mlp

        info, _, apply = fit_mlp(p, lr["z"], data, K, lr["mean"], lr["scale"], lr)
        out["mlp"] = score(apply(data["test"][0]))
        out["epoch"] = info["best_epoch"]
        selections["mlp"] = info["selection"]
    # The report's and predict's rule (`pipeline.heads.primary.choose_primary`).
    from pipeline.heads.artifact import HeadMetrics, HeadsMetrics
    from pipeline.heads.primary import choose_primary

    heads = {h: HeadMetrics(hyper={"selection": s}, splits={}) for h, s in selections.items()}
    out["primary"] = out[choose_primary(HeadsMetrics(classes=[], heads=heads), "auto")]
    return out


def run_sklearn(xfit, yfit, xtest, ytest, K: int, memo: Path | None = None) -> float:
    """The 20-line script: StandardScaler + LogisticRegressionCV(max_iter=5000), its defaults.

    Slow (its fits at large C run to max_iter on separable standardised features: minutes per
    Pets split on two cores), so each result is remembered under ``memo`` keyed by a digest of
    exactly the rows it was given.
    """
    import hashlib
    import json
    import warnings

    h = hashlib.sha256()
    for a in (xfit, yfit, xtest, ytest):
        h.update(np.ascontiguousarray(a).tobytes())
    path = memo / f"{h.hexdigest()[:32]}.json" if memo else None
    if path is not None and path.is_file():
        return float(json.loads(path.read_text())["mean_per_class_accuracy"])

    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pipeline.heads.metrics import mean_per_class_accuracy

    v = xfit.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "least populated class" on the smallest breeds
        model = make_pipeline(StandardScaler(), LogisticRegressionCV(max_iter=5000))
        model.fit(xfit.reshape(-1, xfit.shape[-1]), np.repeat(yfit, v))
    probs = model.predict_proba(xtest.reshape(-1, xtest.shape[-1])).reshape(len(ytest), v, -1).mean(1)
    score = mean_per_class_accuracy(ytest, model.classes_[probs.argmax(1)], K)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"mean_per_class_accuracy": score, "C": float(model[-1].C_[0])}))
    return score


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """(mean of a - b, its standard error over seeds)."""
    d = np.asarray(a) - np.asarray(b)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0


def verdict(mean: float, se: float) -> str:
    return "win" if mean > se else "loss" if mean < -se else "tie"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=list(accuracy_sets.SETS), choices=list(accuracy_sets.SETS))
    ap.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "cache" / "bench")
    ap.add_argument("--no-mlp", action="store_true", help="skip our MLP head (the primary is then the logreg)")
    ap.add_argument("--no-sklearn", action="store_true", help="skip the scikit-learn peer")
    ap.add_argument("--heads", nargs="*", default=[], metavar="KEY=VALUE",
                    help="heads params for our protocol, e.g. logreg.criterion=accuracy")
    ap.add_argument("--val-fraction", type=float, default=0.1,
                    help="val share carved from each fitting half (0.4 gives the val path on 50-per-class sets)")
    args = ap.parse_args()
    overrides = heads_overrides(args.heads)
    load = os.getloadavg()
    print(f"mean per-class accuracy on the held-out half of each tuning set, mean ± std over seeds "
          f"{args.seeds}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    head = (f"{'set':<10} {'configuration':<18} {'ours primary':>14} {'ours logreg':>14} {'ours mlp':>14} "
            f"{'plain probe':>14} {'sklearn':>14} {'diff ± se':>15} {'':>4} {'s':>5}  chosen C/scaling/epochs")
    print(head)
    print("-" * len(head), flush=True)
    fmt = lambda v: f"{np.mean(v):.4f}±{np.std(v):.4f}" if v else "-"  # noqa: E731
    per_config: dict[str, list] = {c: [] for c in args.configs}
    for name in args.configs:
        cfg = parse_config(name)
        for set_name in args.sets:
            x, y, _ = load_features(args.cache_dir, set_name, cfg)
            K = int(y.max()) + 1
            res: dict[str, list] = {k: [] for k in ("primary", "logreg", "mlp", "plain", "sklearn", "chosen")}
            t0 = time.perf_counter()
            for seed in args.seeds:
                fit, test = accuracy_sets.split_halves(y, seed)
                o = run_ours(x[fit], y[fit], x[test], y[test], K, seed, not args.no_mlp, overrides, args.val_fraction)
                for k in ("primary", "logreg", "plain"):
                    res[k].append(o[k])
                if "mlp" in o:
                    res["mlp"].append(o["mlp"])
                res["chosen"].append(f"{o['select']}:{o['C']:.3g}/{'s' if o['std'] else 'r'}" + (f"/{o['epoch']}" if "mlp" in o else ""))
                if not args.no_sklearn:
                    res["sklearn"].append(run_sklearn(x[fit], y[fit], x[test], y[test], K,
                                                     args.cache_dir / "bench-accuracy-sklearn"))
            diff = verdict_text = ""
            if res["sklearn"]:
                m, se = paired(res["primary"], res["sklearn"])
                diff, verdict_text = f"{m:+.4f}±{se:.4f}", verdict(m, se)
            per_config[name].append(res)
            print(f"{set_name:<10} {name:<18} {fmt(res['primary']):>14} {fmt(res['logreg']):>14} {fmt(res['mlp']):>14} "
                  f"{fmt(res['plain']):>14} {fmt(res['sklearn']):>14} {diff:>15} {verdict_text:>4} "
                  f"{time.perf_counter() - t0:>5.0f}  {' '.join(res['chosen'])}", flush=True)
    print()
    for name, rows in per_config.items():
        ours = float(np.mean([np.mean(r["primary"]) for r in rows]))
        line = f"{name}: mean over {len(rows)} sets: ours primary {ours:.4f}"
        if rows and rows[0]["sklearn"]:
            peer = float(np.mean([np.mean(r["sklearn"]) for r in rows]))
            counts = [verdict(*paired(r["primary"], r["sklearn"])) for r in rows]
            line += (f", sklearn {peer:.4f} ({ours - peer:+.4f}); win/tie/loss "
                     f"{counts.count('win')}/{counts.count('tie')}/{counts.count('loss')}")
        print(line)
    load = os.getloadavg()
    print(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
