"""The linear probe's protocol: C and standardisation by k-fold CV, fused backbones, bootstrap CIs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.heads import cv, logreg, metrics
from pipeline.params import ParamsError
from pipeline.heads.params import HeadsParams
from pipeline.heads.trained import load_head
from stages import heads
from tests.stage_helpers import make_ctx, section
from tests.test_heads import write_features

CLASSES = ["ant", "bee", "cat", "dog"]


def blobs(n_per_class: int, seed: int, dim: int = 16, spread: float = 1.6, scales=None):
    """Four overlapping Gaussian classes (C matters) with uneven feature scales (standardising matters)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), n_per_class).astype(np.int32)
    means = 2.0 * np.eye(4, dim)
    x = means[y] + spread * rng.normal(size=(len(y), dim))
    if scales is not None:
        x = x * scales
    return x.astype(np.float32), y


def test_cv_sweep_matches_sklearn_fold_by_fold():
    """Every (standardize, C) point equals scikit-learn fitted on that fold's training rows alone."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    # The shapes of every CV call in this module (48 rows, 16 dims, 5 folds, 13 Cs): one compilation.
    scales = np.geomspace(0.1, 10, 16).astype(np.float32)
    x, y = blobs(12, 0, scales=scales)
    folds = cv.stratified_folds(y, 5, seed=0)
    assert sorted(np.bincount(folds).tolist()) == [9, 9, 10, 10, 10]
    assert all(np.bincount(y[folds == f], minlength=4).max() <= 3 for f in range(5))
    rows = cv.cv_sweep(x, y, 4, np.logspace(-3, 3, 13), [False, True], folds)
    for r in (r for r in rows if r["C"] in (0.01, 0.1, 1.0, 10.0)):  # the reference fits are slow
        pred = np.empty(len(y), np.int64)
        for f in range(5):
            tr, te = folds != f, folds == f
            xt, xe = x[tr], x[te]
            if r["standardize"]:
                sc = StandardScaler().fit(xt)
                xt, xe = sc.transform(xt), sc.transform(xe)
            model = LogisticRegression(C=r["C"], tol=1e-5, max_iter=1000).fit(xt, y[tr])
            pred[te] = model.predict(xe)
        # Both stop at a gradient tolerance, not at the exact optimum: one row may flip.
        assert abs(r["cv_accuracy"] - np.mean(pred == y)) <= 1 / len(y) + 1e-9, r


@pytest.mark.parametrize("criterion", ["log_loss", "accuracy"])
def test_cv_picks_the_known_best_c_and_standardisation(criterion):
    """Where the answer is known: the C (and scaling) that a large held-out sample says is best."""
    # One informative direction hidden among high-variance noise dimensions: unstandardised,
    # the noise dominates the penalty; standardised, a mid-range C wins.
    scales = np.ones(16, np.float32)
    scales[4:] = 30.0
    x, y = blobs(12, 1, scales=scales)
    xt, yt = blobs(1500, 2, scales=scales)
    grid = np.logspace(-3, 3, 13)
    folds = cv.stratified_folds(y, 5, seed=0)
    rows = cv.cv_sweep(x, y, 4, grid, [False, True], folds)
    chosen = cv.choose(rows, len(y), criterion=criterion)
    oracle = {}
    from pipeline.heads.logreg import standardizer

    for std in (False, True):
        mean, scale = standardizer(x) if std else (0.0, 1.0)
        path = logreg.path((x - mean) / scale, y, grid, 4)
        for i, C in enumerate(grid):
            pred = logreg.linear_logits(path.W[i], path.b[i], ((xt - mean) / scale).astype(np.float32)).argmax(1)
            oracle[(std, float(C))] = float(np.mean(pred == yt))
    best_acc = max(oracle.values())
    assert chosen["standardize"] is True
    # CV's pick is within 2 points of the best test accuracy any grid point reaches...
    assert oracle[(chosen["standardize"], chosen["C"])] >= best_acc - 0.02, (chosen, best_acc)
    # ...and far from the worst choices (the grid's ends are much worse here).
    assert best_acc - min(oracle.values()) > 0.15


def test_folds_keep_the_views_of_a_photo_together():
    y = np.repeat(np.arange(4), 6 * 3)                       # 4 classes x 6 photos x 3 views
    ids = [f"c{c}/p{p}.jpg#{v}" for c in range(4) for p in range(6) for v in range(3)]
    groups = cv.image_groups(ids)
    folds = cv.stratified_folds(y, 3, seed=0, groups=groups)
    by_photo = {}
    for g, f in zip(groups, folds):
        by_photo.setdefault(g, set()).add(int(f))
    assert len(by_photo) == 24 and all(len(v) == 1 for v in by_photo.values())
    assert all(np.bincount(folds[y == c], minlength=3).tolist() == [6, 6, 6] for c in range(4))
    assert cv.image_groups([f"p{i}.jpg" for i in range(5)]) is None   # one row per photo


def test_log_loss_chooses_the_lowest_held_out_log_loss():
    """The smooth criterion: the lowest pooled log loss, whatever accuracy says; ties to accuracy."""
    def row(C, acc, ll, std=False):
        return {"C": C, "cv_accuracy": acc, "cv_log_loss": ll, "standardize": std}

    rows = [row(0.1, 0.70, 0.9), row(1.0, 0.80, 0.62), row(10.0, 0.79, 0.55), row(100.0, 0.80, 0.58),
            row(10.0, 0.81, 0.55, std=True)]
    assert cv.choose(rows, 400, criterion="log_loss") == rows[4]   # 0.55 twice: the higher accuracy
    assert cv.choose(rows[:4], 400, criterion="log_loss") == rows[2]
    from pipeline.heads.probe import best_on_val

    sweep = [{"C": 1.0, "val_accuracy": 0.9, "val_log_loss": 0.4}, {"C": 10.0, "val_accuracy": 0.92, "val_log_loss": 0.5}]
    assert best_on_val(sweep, "log_loss")["C"] == 1.0
    assert best_on_val(sweep, "accuracy")["C"] == 10.0


def test_choose_takes_the_weakest_penalty_tied_with_the_best():
    """Within one binomial standard error of the best CV accuracy, the largest C wins."""
    def row(C, acc, ll=1.0, std=False):
        return {"C": C, "cv_accuracy": acc, "cv_log_loss": ll, "standardize": std}

    # n = 400, best 0.80: one standard error is 0.02, so 0.79 ties and 0.77 does not.
    rows = [row(0.1, 0.70), row(1.0, 0.80), row(10.0, 0.79), row(100.0, 0.77), row(10.0, 0.793, std=True)]
    assert cv.choose(rows, 400, tie_se=1.0, criterion="accuracy") == rows[4]   # C = 10 twice: the higher CV accuracy
    assert cv.choose(rows, 400, tie_se=0.25, criterion="accuracy")["C"] == 1.0  # band 0.005: 0.793 does not tie
    assert cv.choose(rows, 400, tie_se=0.0, criterion="accuracy") == cv.best(rows) == rows[1]


SMALL = dict(shots=[2, "all"], shot_draws=1, mlp={"max_epochs": 6, "patience": 2, "hidden": [16]})


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """Two 'backbones' of widths 6 and 10 over the same images, fused by the heads stage."""
    tmp = tmp_path_factory.mktemp("fused")
    splits = {s: blobs(n, seed, dim=16) for s, n, seed in (("train", 10, 3), ("val", 2, 4), ("test", 8, 5))}
    a = write_features(tmp / "a", {s: (x[:, :6] * 5.0, y) for s, (x, y) in splits.items()}, "net_a")
    b = write_features(tmp / "b", {s: (x[:, 6:], y) for s, (x, y) in splits.items()}, "net_b")
    out2 = tmp / "heads_fused"
    ctx = make_ctx(heads.STAGE, {"heads": section(HeadsParams, "heads", **SMALL)}, out2,
                   cache_dir=tmp / "cache", inputs={"features": a})
    # What the runner hands heads for backbone.name: [net_a, net_b].
    fused_summary = heads.STAGE.run(dataclasses.replace(ctx, input_parts={"features": (a, b)}))
    return splits, out2, fused_summary


def test_fused_heads_have_the_right_width_order_and_inputs(fused):
    import jax.numpy as jnp

    splits, out2, fsum = fused
    m = json.loads((out2 / "metrics.json").read_text())
    assert m["backbones"] == [{"backbone": "net_a", "dim": 6}, {"backbone": "net_b", "dim": 10}]
    assert fsum["backbones"] == ["net_a", "net_b"]
    # CV chose C: val holds 2 images per class.
    assert m["heads"]["logreg"]["hyperparameters"]["select"] == "cv"
    for name in ("logreg", "mlp"):
        head = load_head(out2, name)
        x = np.concatenate([splits["test"][0][:, :6] * 5.0, splits["test"][0][:, 6:]], axis=1)
        logits = np.asarray(head.logits(head.params, jnp.asarray(x)))   # raw features, a then b
        stored = json.loads((out2 / f"predictions_{name}.json").read_text())["predictions"]
        assert [CLASSES[i] for i in logits.argmax(1)] == [r["pred"] for r in stored]
        np.testing.assert_allclose(metrics.softmax(logits).max(1), [r["p_pred"] for r in stored], atol=1e-5)
    W = load_head(out2, "logreg").params["W"]
    assert W.shape == (16, 4)
    # A stage that runs one backbone (ideal, adversarial) cannot feed a fused head: it says so.
    with pytest.raises(UserError, match="fused features of net_a, net_b"):
        load_head(out2, "logreg", backbone="net_a")
    assert m["learning_curve"][-1]["shots"] == "all"


def test_metrics_carry_bootstrap_intervals(fused):
    _, out, _ = fused
    r = json.loads((out / "metrics.json").read_text())["heads"]["logreg"]["test"]
    for k in ("accuracy", "mean_per_class_accuracy"):
        lo, hi = r["ci95"][k]
        assert lo <= r[k] <= hi and hi - lo > 0
    # Exact on a known case: all right -> [1, 1]; the interval narrows with more images.
    y = np.repeat(np.arange(4), 25)
    assert metrics.bootstrap_ci(y, y, 4)["accuracy"] == [1.0, 1.0]
    wrong = y.copy()
    wrong[::5] = (wrong[::5] + 1) % 4
    small = metrics.bootstrap_ci(wrong[::4], y[::4], 4)["accuracy"]
    big = metrics.bootstrap_ci(wrong, y, 4)["accuracy"]
    assert small[0] < 0.8 < small[1] and big[0] < 0.8 < big[1] and big[1] - big[0] < small[1] - small[0]


def test_backbone_list_validation_names_the_bad_entry():
    from pipeline import planner
    from pipeline.graph import load_graph

    graph = load_graph()
    with pytest.raises(ParamsError, match=r"backbone\.name\[1\]: 'efficientnet_lite9' is not a registered backbone"):
        planner.resolve_params(graph, [], ["backbone.name=[efficientnet_lite0,efficientnet_lite9]"])
    with pytest.raises(ParamsError, match="twice"):
        planner.resolve_params(graph, [], ["backbone.name=[efficientnet_lite0,efficientnet_lite0]"])


def test_each_backbone_of_a_list_keeps_its_own_features_key(tmp_path):
    """The real graph: [lite0, lite2]'s features parts are exactly lite0's and lite2's runs."""
    from pipeline import planner
    from pipeline.graph import load_graph

    graph = load_graph()

    def plan(*o):
        return planner.plan(graph, planner.resolve_params(graph, [], list(o)), tmp_path)

    lite0, lite2 = plan("backbone.name=efficientnet_lite0"), plan("backbone.name=efficientnet_lite2")
    both = plan("backbone.name=[efficientnet_lite0,efficientnet_lite2]")
    assert [p.key for p in both["features"].parts] == [lite0["features"].key, lite2["features"].key]
    assert both["features"].key == lite0["features"].key        # ctx.inputs["features"]: the first
    assert both["heads"].key not in (lite0["heads"].key, lite2["heads"].key)
    assert plan("backbone.name=[efficientnet_lite0]")["heads"].key == lite0["heads"].key
    params = planner.resolve_params(graph, [], ["backbone.name=[efficientnet_lite2,efficientnet_lite0]"])
    assert params["backbone"].primary == "efficientnet_lite2"   # what ideal / adversarial run


def test_accurate_overlay_parses(tmp_path):
    from pipeline import planner
    from pipeline.graph import load_graph

    root = Path(__file__).resolve().parents[1]
    graph = load_graph()
    params = planner.resolve_params(graph, [root / "params.yaml", root / "params.accurate.yaml"], [])
    assert params["backbone"].names == ("efficientnet_lite2",)
    assert params["features"].image_size is None  # the native size measured best (docs/accuracy.md)
    assert params["heads"].standardize == "auto" and params["heads"].logreg.criterion == "log_loss"


def xor_classes(n_per_class: int, seed: int, dim: int = 8):
    """Four classes, each two opposite clusters in the first two dims: no linear probe separates them."""
    rng = np.random.default_rng(seed)
    centres = np.array([[1, 1], [-1, -1], [1, -1], [-1, 1], [2, 0], [-2, 0], [0, 2], [0, -2]], np.float32) * 2.0
    y = np.repeat(np.arange(4), n_per_class).astype(np.int32)
    which = rng.integers(0, 2, len(y))
    x = 0.5 * rng.normal(size=(len(y), dim)).astype(np.float32)
    x[:, :2] += centres[2 * y + which]
    return x, y


def test_mlp_epochs_chosen_by_cv_and_the_primary_head_follows_cv(tmp_path):
    """Where only a non-linear head can win: CV trains the MLP past epoch 0, and it is primary."""
    from pipeline.heads.primary import choose_primary, selection_scores
    from pipeline.heads.artifact import read

    splits = {s: xor_classes(n, seed) for s, n, seed in (("train", 24, 0), ("val", 2, 1), ("test", 50, 2))}
    feats = write_features(tmp_path / "feats", splits)
    mlp = {"max_epochs": 60, "hidden": [32], "learning_rate": 1e-2, "dropout": 0.0, "batch_size": 32}
    ctx = make_ctx(heads.STAGE, {"heads": section(HeadsParams, "heads", shots=[], mlp=mlp)},
                   tmp_path / "heads", cache_dir=tmp_path / "cache", inputs={"features": feats})
    summary = heads.STAGE.run(ctx)
    m = json.loads((tmp_path / "heads" / "metrics.json").read_text())["heads"]
    hyper = m["mlp"]["hyperparameters"]
    assert hyper["select"] == "cv" and len(hyper["cv_log_loss"]) == 60
    assert hyper["best_epoch"] > 0
    # The record the choice was made on: the CV accuracy at the chosen epoch, above the probe's.
    assert hyper["selection"] == {"by": "cv", "n": 104,
                                  "accuracy": pytest.approx(hyper["cv_accuracy_per_epoch"][hyper["best_epoch"] - 1])}
    assert m["logreg"]["hyperparameters"]["selection"]["by"] == "cv"
    assert hyper["selection"]["accuracy"] > m["logreg"]["hyperparameters"]["selection"]["accuracy"] + 0.2
    assert summary["mlp_test_accuracy"] > summary["logreg_test_accuracy"] + 0.2
    got = read(tmp_path / "heads")
    assert selection_scores(got)[1] == "the best by cross-validated accuracy"
    assert choose_primary(got, "auto") == "mlp"


def test_a_later_head_must_beat_the_first_by_more_than_the_selection_noise():
    """The MLP's score is the best of many epochs' CV scores: a win inside one standard error of
    the probe's accuracy (over the images scored) leaves the probe primary."""
    from pipeline.heads.artifact import HeadMetrics, HeadsMetrics
    from pipeline.heads.primary import choose_primary

    def run(mlp_accuracy, n=400):
        sel = {"logreg": {"by": "cv", "accuracy": 0.80, "n": n}, "mlp": {"by": "cv", "accuracy": mlp_accuracy, "n": n}}
        heads = {h: HeadMetrics(hyper={"selection": v}, splits={}) for h, v in sel.items()}
        return choose_primary(HeadsMetrics(classes=[], heads=heads), "auto")

    # n = 400 at 0.80: one standard error is 0.02.
    assert run(0.81) == "logreg" and run(0.819) == "logreg"
    assert run(0.83) == "mlp"
    assert run(0.81, n=40_000) == "mlp"       # the same win over 100 times the images is not noise
    assert run(0.79) == "logreg"


def test_inspect_explains_a_fused_run_with_a_probe_on_its_first_backbone(fused, tmp_path):
    """Grad-CAM needs a head on one backbone: for fused heads, inspect fits the probe on the first."""
    import jax.numpy as jnp

    from pipeline.heads.trained import fused_backbones
    from stages.inspect import probe_on_one_backbone

    splits, out2, _ = fused
    assert fused_backbones(out2, "logreg") == fused_backbones(out2) == ["net_a", "net_b"]
    a = write_features(tmp_path / "a", {s: (x[:, :6] * 5.0, y) for s, (x, y) in splits.items()}, "net_a")
    head = probe_on_one_backbone(a, CLASSES)
    alone = tmp_path / "heads_a"
    heads.STAGE.run(make_ctx(heads.STAGE, {"heads": section(HeadsParams, "heads", **{**SMALL, "shots": []})}, alone,
                             cache_dir=tmp_path / "cache", inputs={"features": a}))
    assert fused_backbones(alone, "logreg") == []
    ref = load_head(alone, "logreg", backbone="net_a")
    x = jnp.asarray(splits["test"][0][:, :6] * 5.0)
    np.testing.assert_allclose(np.asarray(head.logits(head.params, x)), np.asarray(ref.logits(ref.params, x)),
                               rtol=1e-4, atol=1e-4)
