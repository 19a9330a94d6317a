"""Accuracy on real photos: our heads against a scikit-learn CV probe, same features, same splits.

The photos are ../shared/data/pets-tune plus pets-dev (491 Oxford-IIIT Pet photos, 37 breeds;
tuning data only: never a reported held-out result). Their features are computed once per
configuration by the pipeline's own features stage into ``--cache-dir`` (reused on reruns). For
every seed, each class's images are split in half, stratified: one half to fit on (train+val),
the other to score (test). Per configuration and seed, on the same rows:

- ``ours logreg`` / ``ours mlp``: the heads stage's protocol (`pipeline.heads.probe.fit_logreg`:
  C and standardisation by 5-fold CV on this small val, refit; `mlp_fit.fit_mlp`), with a val
  split carved from the fitting half as the data stage does (10 %, stratified);
- ``ours primary``: the head the report and ``predict`` use (the higher selection score: CV
  accuracy here), i.e. the pipeline's answer; without ``--mlp``, the logreg;
- ``sklearn CV probe``: the 20-line script, ``LogisticRegressionCV(Cs=13 values 1e-3..1e3,
  cv=3 stratified folds)`` on raw features, refit on the whole fitting half.

Configurations: each of lite0/1/2; lite0+1+2 fused (per-backbone L2, our default, and raw);
lite0 with test-time augmentation (mirror, and mirror x 5 crops), views either averaged into one
row (``reduce: mean``) or kept as training rows with the test predictions averaged per image
(``reduce: rows``). The metric is mean per-class accuracy on the test half (Pets' headline),
printed as mean ± std over seeds.

Usage:
  python benchmarks/bench_accuracy.py [--seeds 0 1 2] [--cache-dir cache/bench] [--photos DIR]
      [--configs NAME ...] [--mlp] [--no-sklearn]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"

# name -> (backbones, augment, reduce-at-heads)
CONFIGS = {
    "lite0": (["efficientnet_lite0"], "none", "mean"),
    "lite1": (["efficientnet_lite1"], "none", "mean"),
    "lite2": (["efficientnet_lite2"], "none", "mean"),
    "lite0+1+2 (l2)": (["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"], "none", "mean"),
    "lite0+1+2 (raw)": (["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"], "none", "mean"),
    "lite0 flip mean": (["efficientnet_lite0"], "flip", "mean"),
    "lite0 flip rows": (["efficientnet_lite0"], "flip", "rows"),
    "lite0 flip_crops mean": (["efficientnet_lite0"], "flip_crops", "mean"),
    "lite0 flip_crops rows": (["efficientnet_lite0"], "flip_crops", "rows"),
    "lite0+1+2 flip mean": (["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"], "flip", "mean"),
}


def photo_folder(cache_dir: Path) -> Path:
    """pets-tune + pets-dev as one folder of class sub-folders (symlinks), made once."""
    folder = cache_dir / "pets-tune+dev"
    if not folder.exists():
        tmp = folder.with_suffix(".tmp")
        for src in (DATA / "pets-tune", DATA / "pets-dev"):
            for cls in sorted(p for p in src.iterdir() if p.is_dir()):
                (tmp / cls.name).mkdir(parents=True, exist_ok=True)
                for f in sorted(cls.iterdir()):
                    (tmp / cls.name / f"{src.name}_{f.name}").symlink_to(f.resolve())
        tmp.rename(folder)
    return folder


def features(cache_dir: Path, photos: Path, backbone: str, augment: str) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """(rows (N x views, D), labels per image, image ids, views) from the pipeline's features stage.

    Views are stored as rows (``reduce: rows``), every split concatenated: the bench carves its
    own splits. Runs the stage only where the cache lacks it.
    """
    from pipeline import runner
    from pipeline.graph import load_graph
    from pipeline.progress import QuietReporter
    from pipeline.features.artifact import load_split

    graph = load_graph()
    overrides = ["data.source=folder", f"data.path={photos}", f"backbone.name={backbone}",
                 f"features.augment={augment}", "features.reduce=rows", "features.workers=2"]
    params = runner.resolve_params(graph, [], overrides)
    plan = runner.plan(graph, params, cache_dir)["features"]
    if not plan.up_to_date:
        print(f"  computing features: {backbone} augment={augment} ...", flush=True)
        runner.execute(graph, params, cache_dir, ["features"], QuietReporter())
    info = json.loads((plan.out / "info.json").read_text())
    xs, ys, ids = [], [], []
    for split in ("train", "val", "test"):
        x, y, i = load_split(plan.out, split)
        xs.append(np.asarray(x, np.float32))
        ys.append(np.asarray(y))
        ids += i
    views = int(info["views"])
    y = np.concatenate(ys)[::views]
    return np.concatenate(xs), y, [i.split("#")[0] for i in ids[::views]], views


def split_halves(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, test) image indices: each class halved at random (a class of one goes to fit)."""
    rng = np.random.default_rng(seed)
    fit, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = len(idx) // 2
        test += list(idx[:k])
        fit += list(idx[k:])
    return np.sort(fit), np.sort(test)


def carve_val(y: np.ndarray, seed: int, fraction: float = 0.1) -> np.ndarray:
    """Boolean mask of val rows within the fitting half (stratified, as the data stage carves)."""
    rng = np.random.default_rng(seed + 1000)
    val = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        val[idx[:int(round(fraction * len(idx)))]] = True
    return val


def mpca(y: np.ndarray, pred: np.ndarray, K: int) -> float:
    from pipeline.heads.metrics import mean_per_class_accuracy

    return mean_per_class_accuracy(y, pred, K)


def per_image(x: np.ndarray, views: int, reduce: str) -> np.ndarray:
    """(images, views, D) -> the rows the heads see: averaged views, or every view."""
    x = x.reshape(-1, views, x.shape[1])
    return x.mean(axis=1) if reduce == "mean" else x


def run_ours(xfit, yfit, xtest, ytest, K, seed, views_rows: int, mlp: bool) -> dict:
    """Our heads protocol on (images[, views], D) arrays; test predictions averaged over views."""
    from pipeline.heads import probe
    from pipeline.heads.logreg import linear_logits
    from pipeline.heads.metrics import softmax
    from pipeline.heads.params import HeadsParams
    from pipeline.params import parse_section

    p = parse_section(HeadsParams, {"seed": seed}, "heads")
    val = carve_val(yfit, seed)
    rep = lambda a: np.repeat(a, views_rows)  # noqa: E731 -- labels per row
    flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
    # Row ids as the features stage writes them (<photo>#<view>): CV folds keep a photo's views together.
    ids = lambda idx: [f"{i}#{v}" for i in idx for v in range(views_rows)]  # noqa: E731
    data = {"classes": list(range(K)),
            "train": (flat(xfit[~val]), rep(yfit[~val]), ids(np.flatnonzero(~val))),
            "val": (flat(xfit[val]), rep(yfit[val]), ids(np.flatnonzero(val))),
            "test": (flat(xtest), rep(ytest), [])}
    lr = probe.fit_logreg(p, data, K)
    probs = softmax(linear_logits(lr["W"], lr["b"], lr["z"]["test"])).reshape(len(ytest), views_rows, K).mean(1)
    out = {"logreg": mpca(ytest, probs.argmax(1), K), "C": lr["chosen"]["C"], "std": lr["standardize"]}
    if mlp:
        from pipeline.heads.mlp_fit import fit_mlp

        info, _, apply = fit_mlp(p, lr["z"], data, K, lr["mean"], lr["scale"], lr)
        pm = softmax(apply(data["test"][0])).reshape(len(ytest), views_rows, K).mean(1)
        out["mlp"] = mpca(ytest, pm.argmax(1), K)
        out["epoch"] = info["best_epoch"]
        # The primary head, as the report and `predict` pick it: the better selection score
        # (ties to logreg); its test figure is the pipeline's answer.
        better = info["selection"]["accuracy"] > lr["chosen"]["selection"]["accuracy"]
        out["primary"] = out["mlp"] if better else out["logreg"]
    return out


def run_sklearn(xfit, yfit, xtest, ytest, K, seed, views_rows: int) -> float:
    """The 20-line probe: LogisticRegressionCV, 13 Cs, 3 stratified folds, raw features."""
    import warnings

    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    x = xfit.reshape(-1, xfit.shape[-1])
    y = np.repeat(yfit, views_rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence and "least populated class" warnings
        # Folds by image, not by row: the views of one photo never straddle a fold.
        groups = np.repeat(np.arange(len(yfit)), views_rows)
        folds = list(StratifiedKFold(3, shuffle=True, random_state=seed).split(np.zeros(len(yfit)), yfit))
        cv = [(np.flatnonzero(np.isin(groups, tr)), np.flatnonzero(np.isin(groups, te))) for tr, te in folds]
        model = LogisticRegressionCV(Cs=np.logspace(-3, 3, 13), cv=cv, max_iter=1000).fit(x, y)
    probs = model.predict_proba(xtest.reshape(-1, xtest.shape[-1])).reshape(len(ytest), views_rows, -1).mean(1)
    return mpca(ytest, model.classes_[probs.argmax(1)], K)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "cache" / "bench")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--mlp", action="store_true", help="also train our MLP head (slower)")
    ap.add_argument("--photos", type=Path, default=None,
                    help="an existing folder of pets-tune + pets-dev class folders (default: made under --cache-dir)")
    ap.add_argument("--no-sklearn", action="store_true", help="skip the scikit-learn peer")
    args = ap.parse_args()
    import os

    load = os.getloadavg()
    photos = (args.photos or photo_folder(args.cache_dir)).resolve()  # the data key hashes the path
    print(f"mean per-class accuracy on the held-out half of pets-tune+dev (491 photos, 37 breeds), "
          f"mean ± std over seeds {args.seeds}; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    head = (f"{'configuration':<24} {'dim':>5} {'rows/img':>8} {'ours logreg':>14} {'ours mlp':>14} "
            f"{'ours primary':>14} {'sklearn CV':>14} {'primary - sk':>12} {'s':>5}  "
            f"chosen C / scaling (r raw, s std) / MLP epochs")
    print(head)
    print("-" * len(head), flush=True)
    from pipeline.heads.inputs import normalize_block

    for name in args.configs:
        backbones, augment, reduce = CONFIGS[name]
        parts = [features(args.cache_dir, photos, b, augment) for b in backbones]
        y, views = parts[0][1], parts[0][3]
        assert all(p[2] == parts[0][2] for p in parts), "backbones saw different images"
        fuse = "none" if ("raw" in name or len(parts) == 1) else "l2"
        x = np.concatenate([normalize_block(p[0], fuse) for p in parts], axis=1)
        K = int(y.max()) + 1
        xi = per_image(x, views, reduce)              # (images, D) or (images, views, D)
        vr = 1 if reduce == "mean" else views
        res = {"ours logreg": [], "ours mlp": [], "ours primary": [], "sklearn CV probe": [], "C": [], "std": [],
               "epoch": []}
        t0 = time.perf_counter()
        for seed in args.seeds:
            fit, test = split_halves(y, seed)
            o = run_ours(xi[fit], y[fit], xi[test], y[test], K, seed, vr, args.mlp)
            res["ours logreg"].append(o["logreg"])
            res["C"].append(o["C"])
            res["std"].append(o["std"])
            if args.mlp:
                res["ours mlp"].append(o["mlp"])
                res["ours primary"].append(o["primary"])
                res["epoch"].append(o["epoch"])
            if not args.no_sklearn:
                res["sklearn CV probe"].append(run_sklearn(xi[fit], y[fit], xi[test], y[test], K, seed, vr))

        def f(v):
            return f"{np.mean(v):.4f}±{np.std(v):.4f}" if v else "-"

        ours = res["ours primary"] or res["ours logreg"]
        diff = (f"{np.mean(ours) - np.mean(res['sklearn CV probe']):+.4f}" if res["sklearn CV probe"] else "-")
        chosen = ", ".join(f"{c:.3g}/{'s' if s else 'r'}" + (f"/{e}" if res["epoch"] else "")
                           for c, s, e in zip(res["C"], res["std"], res["epoch"] or [None] * len(res["C"])))
        print(f"{name:<24} {x.shape[1]:>5} {vr:>8} {f(res['ours logreg']):>14} {f(res['ours mlp']):>14} "
              f"{f(res['ours primary']):>14} {f(res['sklearn CV probe']):>14} {diff:>12} "
              f"{time.perf_counter() - t0:>5.0f}  {chosen}", flush=True)
    load = os.getloadavg()
    print(f"\nload average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

if __name__ == "__main__":
    main()
