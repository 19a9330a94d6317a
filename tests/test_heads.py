"""Stage `heads`: logreg (JAX and scikit-learn), MLP, learning curve, saved heads, params errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.heads import logreg, metrics, mlp, probe
from pipeline.params import ParamsError
from pipeline.heads.params import HeadsParams, LogregParams
from pipeline.heads.trained import load_head
from stages import heads
from tests.stage_helpers import SHARED_DATA, run_stage, section

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["ant", "bee", "cat", "dog"]
SMALL = dict(standardize=True, logreg={"select": "val"}, shots=[1, 2, "all"], shot_draws=2, mlp={"max_epochs": 15, "patience": 3, "hidden": [32]})


def separable(n_per_class: int, seed: int, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Four well-separated Gaussian blobs, non-negative like pooled activations: the answer is known."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(CLASSES)), n_per_class).astype(np.int32)
    means = 3.0 * np.eye(len(CLASSES), dim) + 1.0
    x = means[y] + 0.3 * rng.normal(size=(len(y), dim))
    return np.maximum(x, 0).astype(np.float32), y


def write_features(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], backbone: str = "synthetic") -> Path:
    """A features-stage output folder (classes.json, info.json, <split>/features|labels|ids)."""
    root.mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps(CLASSES))
    for split, (x, y) in splits.items():
        (root / split).mkdir()
        np.save(root / split / "features.npy", x)
        np.save(root / split / "labels.npy", y)
        (root / split / "ids.json").write_text(json.dumps([f"{split}/{i}.jpg" for i in range(len(y))]))
    dim = next(iter(splits.values()))[0].shape[1]
    (root / "info.json").write_text(json.dumps({"backbone": backbone, "feature_dim": dim, "dtype": "float32",
                                                "splits": {s: len(v[1]) for s, v in splits.items()}}))
    return root


@pytest.fixture(scope="module")
def feats(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("heads")
    return write_features(tmp / "features", {"train": separable(12, 0), "val": separable(6, 1),
                                             "test": separable(6, 2)})


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory) -> Path:
    """One cache root for the module, so the subprocess run reuses the compiled fits."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def fitted(feats, jax_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "heads"
    summary, _ = run_stage(heads.STAGE, {"heads": section(HeadsParams, "heads", **SMALL)}, out,
                           inputs={"features": feats}, cache_dir=jax_cache)
    return summary, out


def test_separable_features_are_classified_perfectly(fitted):
    summary, out = fitted
    m = json.loads((out / "metrics.json").read_text())
    for head in ("logreg", "mlp"):
        for split in ("train", "val", "test"):
            r = m["heads"][head][split]
            assert r["accuracy"] == 1.0 and r["mean_per_class_accuracy"] == 1.0, (head, split)
            assert np.array_equal(np.diag(r["confusion_matrix"]), [r["n"] // 4] * 4)
            assert all(v["f1"] == 1.0 for v in r["per_class"].values())
            assert 0 <= r["log_loss"] < 0.5
        assert summary[f"{head}_test_accuracy"] == 1.0
    chosen = m["heads"]["logreg"]["hyperparameters"]
    lp = LogregParams()
    assert lp.c_min <= chosen["C"] <= lp.c_max and chosen["val_accuracy_at_C"] == 1.0
    # Ties in val accuracy go to the lower val log loss: on separable data, weak regularisation.
    sweep = chosen["sweep"]
    assert chosen["C"] == min((r for r in sweep if r["val_accuracy"] == 1.0), key=lambda r: r["val_log_loss"])["C"]
    assert [r["C"] for r in sweep] == sorted(r["C"] for r in sweep)
    curve = {r["shots"]: r for r in m["learning_curve"]}
    assert set(curve) == {1, 2, "all"} and curve[1]["n_train"] == 4 and curve["all"]["n_train"] == 48
    assert curve["all"]["logreg_accuracy"] == 1.0 and curve["all"]["knn_accuracy"] == 1.0
    assert 0 <= m["heads"]["mlp"]["hyperparameters"]["best_epoch"] <= m["heads"]["mlp"]["hyperparameters"]["epochs_run"]


def test_every_head_is_compared_with_the_plain_probe(fitted):
    """metrics.json holds the plain probe's scores and each head's paired difference to it."""
    from pipeline.heads.metrics import paired_difference

    _, out = fitted
    m = json.loads((out / "metrics.json").read_text())
    base = m["baseline"]
    assert base["split"] == "test" and base["mean_per_class_accuracy"] == 1.0 and "StandardScaler" in base["description"]
    lp = LogregParams()
    assert lp.c_min <= base["C"] <= lp.c_max and base["select"] == "val"
    for head in ("logreg", "mlp"):
        vs = m["heads"][head]["vs_plain_probe"]
        assert vs == {"split": "test", "difference": 0.0, "ci95": [0.0, 0.0], "verdict": "tied"}, head
    # A head right on every image against a baseline right on half of each class's images.
    y = np.repeat(np.arange(4), 10)
    half = np.where(np.arange(40) % 10 < 5, y, (y + 1) % 4)
    d = paired_difference(y, y, half, 4)
    assert d["difference"] == 0.5 and d["verdict"] == "above" and 0.3 < d["ci95"][0] < 0.5 < d["ci95"][1] < 0.7
    assert paired_difference(y, half, y, 4)["verdict"] == "below"


def test_the_heads_artifact_reads_back_what_the_stage_wrote(fitted, tmp_path):
    """One type, one writer, one reader: `read` gives the stage's metrics.json as a `HeadsMetrics`,
    and `write_metrics` of that writes the same JSON back."""
    from pipeline.heads import artifact

    _, out = fitted
    m = artifact.read(out)
    assert m.classes == CLASSES and set(m.heads) == {"logreg", "mlp"} and m.judged_split() == "test"
    assert m.heads["logreg"].splits["test"]["accuracy"] == 1.0 and m.heads["mlp"].vs_plain_probe["split"] == "test"
    assert m.baseline["split"] == "test" and [r.shots for r in m.learning_curve] == [1, 2, "all"]
    artifact.write_metrics(tmp_path, m)
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads((out / "metrics.json").read_text())
    assert artifact.read(tmp_path) == m
    assert artifact.read(tmp_path / "absent") is None
    # A file that is there but is not what the writer writes: one error naming it and the fix.
    for damaged in ("{not json", "[]", json.dumps({"classes": CLASSES})):
        (tmp_path / "metrics.json").write_text(damaged)
        with pytest.raises(UserError, match=re.escape(str(tmp_path / "metrics.json")) + ".*--force heads"):
            artifact.read(tmp_path)
    (tmp_path / "predictions_logreg.json").write_text('{"classes": ["a"], "predictions": [{"id": 1}]}')
    with pytest.raises(UserError, match="predictions_logreg.json.*--force heads"):
        artifact.read_predictions(tmp_path, "logreg")
    assert artifact.read_predictions(tmp_path, "mlp") is None
    from pipeline.heads import trained

    assert trained.read_classes(out) == CLASSES


def test_predictions_file_and_loaded_heads_agree(fitted, feats):
    import jax
    import jax.numpy as jnp

    from pipeline.heads import artifact

    _, out = fitted
    x = np.load(feats / "test" / "features.npy")
    y = np.load(feats / "test" / "labels.npy")
    for name in ("logreg", "mlp"):
        stored = json.loads((out / f"predictions_{name}.json").read_text())
        rows = stored["predictions"]
        assert [r["id"] for r in rows] == [f"test/{i}.jpg" for i in range(len(y))]
        assert [r["true"] for r in rows] == [CLASSES[i] for i in y]
        assert all(len(r["top"]) == 4 and r["top"][0][0] == r["pred"] for r in rows)
        typed = artifact.read_predictions(out, name)  # the one reader: rows as `PredictionRow`s
        assert [(t.id, CLASSES[t.true], CLASSES[t.pred], t.p_pred, t.p_true, [list(x) for x in t.top]) for t in typed] \
            == [(r["id"], r["true"], r["pred"], r["p_pred"], r["p_true"], r["top"]) for r in rows]
        head = load_head(out, name)
        assert head.classes == CLASSES
        logits = head.logits(head.params, jnp.asarray(x))  # raw features: standardisation folded in
        assert logits.shape == (len(y), 4)
        probs = metrics.softmax(np.asarray(logits))
        np.testing.assert_allclose(probs.max(axis=1), [r["p_pred"] for r in rows], atol=1e-5)
        assert [CLASSES[i] for i in probs.argmax(axis=1)] == [r["pred"] for r in rows]
        # Differentiable in the features, as the gradient stages need.
        g = jax.grad(lambda f: head.logits(head.params, f)[:, 0].sum())(jnp.asarray(x))
        assert g.shape == x.shape and np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).sum() > 0
    with pytest.raises(KeyError, match="available: logreg, mlp"):
        load_head(out, "svm")


def test_jax_logreg_matches_sklearn(feats):
    x, y = np.load(feats / "train" / "features.npy"), np.load(feats / "train" / "labels.npy")
    xt = np.load(feats / "test" / "features.npy")
    # Overlapping classes (noise 1.0), so C matters and the solutions are not at the boundary.
    noisy = x + np.random.default_rng(3).normal(scale=1.0, size=x.shape).astype(np.float32)
    for labels, k in ((y, 4), ((y >= 2).astype(np.int32), 2)):  # multinomial, and binomial like sklearn
        Cs = [0.01, 0.1, 1.0]
        pj = logreg.path(noisy, labels, Cs, k, solver="jax")
        ps = logreg.path(noisy, labels, Cs, k, solver="sklearn")
        for i in range(len(Cs)):
            lj, ls = (logreg.linear_logits(p.W[i], p.b[i], xt) for p in (pj, ps))
            np.testing.assert_array_equal(lj.argmax(1), ls.argmax(1))
            # Both stop at a gradient tolerance of 1e-4 (float32 here, float64 there).
            np.testing.assert_allclose(metrics.softmax(lj), metrics.softmax(ls), atol=2e-3)


def test_balanced_class_weights_match_sklearn(feats):
    from sklearn.linear_model import LogisticRegression
    from sklearn.utils.class_weight import compute_class_weight

    x, y = np.load(feats / "train" / "features.npy"), np.load(feats / "train" / "labels.npy")
    keep = np.r_[np.flatnonzero(y != 3), np.flatnonzero(y == 3)[:3]]  # class 3 rare: 3 of 39
    noisy = x + np.random.default_rng(4).normal(scale=1.0, size=x.shape).astype(np.float32)
    x, y = noisy[keep], y[keep]
    w = probe.class_weights(y, 4, "balanced")
    np.testing.assert_allclose(w, compute_class_weight("balanced", classes=np.arange(4), y=y)[y], rtol=1e-6)
    assert probe.class_weights(y, 4, "none") is None
    ours = logreg.path(x, y, [0.1], 4, sample_weight=w, solver="jax")
    ref = LogisticRegression(C=0.1, class_weight="balanced").fit(x, y)
    xt = np.load(feats / "test" / "features.npy")
    np.testing.assert_allclose(metrics.softmax(logreg.linear_logits(ours.W[0], ours.b[0], xt)),
                               ref.predict_proba(xt), atol=2e-3)


def test_mlp_is_reproducible_with_its_seed(feats, fitted):
    x, y = np.load(feats / "train" / "features.npy"), np.load(feats / "train" / "labels.npy")
    xv, yv = np.load(feats / "val" / "features.npy"), np.load(feats / "val" / "labels.npy")
    # The stage's config in the fixture above, so the compiled training loop is reused.
    cfg = mlp.MLPConfig(hidden=(32,), max_epochs=15, patience=3)
    start = (np.zeros((x.shape[1], 4), np.float32), np.zeros(4, np.float32))
    a, b, c = (mlp.train(x, y, xv, yv, 4, cfg, seed=s, skip_init=start) for s in (7, 7, 8))
    assert all(np.array_equal(u, v) for u, v in zip(_leaves(a.params), _leaves(b.params)))
    assert not np.array_equal(_leaves(a.params)[0], _leaves(c.params)[0])
    np.testing.assert_array_equal(a.val_loss, b.val_loss)


def test_mlp_optimiser_settings_change_the_run_not_the_program(feats, fitted):
    """Learning rate, weight decay and label smoothing are values of one compiled training run:
    a heads rerun after changing them trains at once, where it used to compile for seconds."""
    import dataclasses

    x, y = np.load(feats / "train" / "features.npy"), np.load(feats / "train" / "labels.npy")
    xv, yv = np.load(feats / "val" / "features.npy"), np.load(feats / "val" / "labels.npy")
    cfg = mlp.MLPConfig(hidden=(32,), max_epochs=15, patience=3)
    other = dataclasses.replace(cfg, learning_rate=3e-3, weight_decay=1e-2, label_smoothing=0.0)
    shape = (4, len(y), x.shape[1])
    assert mlp._train_fn(cfg, *shape) is mlp._train_fn(other, *shape)
    assert mlp._train_fn(dataclasses.replace(cfg, hidden=(16,)), *shape) is not mlp._train_fn(cfg, *shape)
    start = (np.zeros((x.shape[1], 4), np.float32), np.zeros(4, np.float32))
    a, b = (mlp.train(x, y, xv, yv, 4, c, seed=7, skip_init=start) for c in (cfg, other))
    # The values reach the run: a higher peak rate and no smoothing fit the training rows faster.
    n = min(a.epochs_run, b.epochs_run)
    assert n >= 3 and b.train_loss[n - 1] < a.train_loss[n - 1]
    assert not np.array_equal(_leaves(a.params)[0], _leaves(b.params)[0])


def _leaves(tree):
    import jax

    return [np.asarray(v) for v in jax.tree.leaves(tree)]


def test_stage_does_not_import_tensorflow_and_reruns_identically(fitted, feats, jax_cache, tmp_path):
    """A fresh interpreter runs the stage; same params and seed give the same metrics."""
    _, out = fitted
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from pipeline.heads.params import HeadsParams
        from stages import heads
        from tests.stage_helpers import run_stage, section
        params = {{"heads": section(HeadsParams, "heads", **{SMALL!r})}}
        run_stage(heads.STAGE, params, Path({str(tmp_path / 'heads')!r}),
                  inputs={{"features": Path({str(feats)!r})}}, cache_dir=Path({str(jax_cache)!r}))
        assert "jax" in sys.modules
        print("tensorflow" in sys.modules)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False"
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (out, tmp_path / "heads"))
    a.pop("seconds"), b.pop("seconds")
    for m in (a, b):
        for h in m["heads"].values():
            h["hyperparameters"].pop("seconds")
    assert a == b


def test_the_probe_memo_is_keyed_by_exactly_the_fields_marked_as_probe_reads():
    """One home for what the probe reads: the `probe_reads` marks in `HeadsParams`. Changing a
    marked field changes the memo key (``seed`` only under CV); changing any other field does not."""
    import dataclasses

    from pipeline.heads.memo import probe_key
    from pipeline.heads.params import MLPParams, probe_fields

    x, y = separable(12, seed=0)
    ids = [f"img{i}" for i in range(len(y))]
    data = {"train": (x, y, ids), "val": (x[:8], y[:8], ids[:8])}
    other = {"standardize": False, "fuse": "none", "class_weight": "balanced", "seed": 5, "shots": (1,),
             "shot_draws": 2, "shot_tol": 1e-2, "knn_k": 3, "top_k": 2, "logreg": LogregParams(c_per_decade=3),
             "mlp": MLPParams(dropout=0.3)}
    marked = probe_fields()
    assert set(marked) == {"logreg", "standardize", "class_weight", "seed"}
    for select in ("val", "cv"):
        base = HeadsParams(logreg=LogregParams(select=select))
        key = probe_key(base, data, 4)
        for f in dataclasses.fields(HeadsParams):
            value = other[f.name] if f.name != "logreg" else LogregParams(select=select, c_per_decade=3)
            changed = probe_key(dataclasses.replace(base, **{f.name: value}), data, 4) != key
            reads = f.name in marked and (marked[f.name] == "always" or select == "cv")
            assert changed == reads, (select, f.name)


def test_the_probe_is_reused_when_only_what_it_does_not_read_changes(feats, tmp_path):
    """An MLP or (val-path) seed change reuses the probe's fit; a logreg change or a damaged memo
    refits, and the refit is the same fit as the reused one."""
    from pipeline.heads.memo import memo_dir
    from pipeline.progress import QuietReporter

    cache = tmp_path / "cache"

    def run(name: str, **changes):
        reporter = QuietReporter()
        params = {"heads": section(HeadsParams, "heads", **{**SMALL, **changes})}
        run_stage(heads.STAGE, params, tmp_path / name, inputs={"features": feats}, cache_dir=cache,
                  reporter=reporter)
        with np.load(tmp_path / name / "logreg.npz") as f:
            weights = {k: f[k] for k in f.files}
        chosen = json.loads((tmp_path / name / "metrics.json").read_text())["heads"]["logreg"]["hyperparameters"]
        chosen.pop("seconds")
        return weights, chosen, any("memo" in line for line in reporter.lines)

    first, chosen, reused = run("first")
    assert not reused and len(list(memo_dir(cache).glob("*.npz"))) == 1
    wider = {**SMALL["mlp"], "hidden": [16]}
    for name, changes in [("mlp", {"mlp": wider}), ("seed", {"seed": 3})]:
        again, chosen_again, reused = run(name, **changes)
        assert reused, name
        assert chosen_again == chosen and all(np.array_equal(first[k], again[k]) for k in first)
    _, other, reused = run("grid", logreg={"select": "val", "c_per_decade": 3})
    assert not reused and len(other["sweep"]) != len(chosen["sweep"])
    # Under CV the seed deals the folds: a new seed is a new probe.
    assert not run("cv", logreg={"select": "cv"})[2]
    assert not run("cv_seed", logreg={"select": "cv"}, seed=1)[2]
    assert run("cv_mlp", logreg={"select": "cv"}, seed=1, mlp=wider)[2]
    for memo in memo_dir(cache).glob("*.npz"):
        memo.write_bytes(memo.read_bytes()[:100])   # truncated, as by a full disk
    refit, chosen_refit, reused = run("refit", mlp=wider)
    assert not reused and chosen_refit == chosen
    assert all(np.array_equal(first[k], refit[k]) for k in first)


@pytest.mark.parametrize("values, key", [
    ({"logreg": {"c_min": -1.0}}, "heads.logreg.c_min"),
    ({"logreg": {"c_min": 10.0, "c_max": 1.0}}, "heads.logreg.c_max"),
    ({"logreg": {"solver": "liblinear"}}, "heads.logreg.solver"),
    ({"mlp": {"hidden": []}}, "heads.mlp.hidden"),
    ({"mlp": {"hidden": [0]}}, "heads.mlp.hidden[0]"),
    ({"mlp": {"dropout": 1.5}}, "heads.mlp.dropout"),
    ({"shots": [0, "all"]}, "heads.shots[0]"),
    ({"shots": ["most"]}, "heads.shots[0]"),
    ({"mlp": {"hiden": [8]}}, "heads.mlp.hiden"),
])
def test_bad_params_name_the_key(values, key):
    with pytest.raises(ParamsError) as e:
        section(HeadsParams, "heads", **values)
    assert str(e.value).startswith(key), str(e.value)


def test_split_with_one_class_is_a_clear_error(tmp_path):
    x, y = separable(4, 0)
    one = (x[y == 0], y[y == 0])
    feats = write_features(tmp_path / "features", {"train": (x, y), "val": one})
    with pytest.raises(UserError, match=r"val split has only one class \('ant'\).*data.val_fraction"):
        run_stage(heads.STAGE, {"heads": section(HeadsParams, "heads")}, tmp_path / "out",
                  inputs={"features": feats})
    feats2 = write_features(tmp_path / "f2", {"train": (x, y)})
    with pytest.raises(UserError, match="no val split"):
        run_stage(heads.STAGE, {"heads": section(HeadsParams, "heads")}, tmp_path / "out2",
                  inputs={"features": feats2})


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "cats-dogs-dev").is_dir(), reason=f"real photos not found at {SHARED_DATA}")
def test_real_photos_cats_vs_dogs(tmp_path):
    """data -> features (efficientnet_lite0, real weights) -> heads on 8 photos per class and split."""
    from stages import data as data_stage
    from stages import features

    dp = {"data": section(data_stage.DataParams, "data", source="folder", path=str(SHARED_DATA / "cats-dogs-dev"),
                          val_fraction=0.25, test_fraction=0.25, max_per_class=8)}
    run_stage(data_stage.STAGE, dp, tmp_path / "data")
    fp = {"backbone": section(features.BackboneParams, "backbone"),
          "features": section(features.FeaturesParams, "features", batch_size=16, shard_size=32)}
    cache = REPO / "cache"  # converted weights are shared with the other real-weight tests
    run_stage(features.STAGE, fp, tmp_path / "feat", inputs={"data": tmp_path / "data"}, cache_dir=cache)
    summary, _ = run_stage(heads.STAGE, {"heads": section(HeadsParams, "heads", shots=[1, "all"])},
                           tmp_path / "heads", inputs={"features": tmp_path / "feat"}, cache_dir=cache)
    # ImageNet features separate cats from dogs almost perfectly; 16 test photos, so a margin.
    assert summary["logreg_test_accuracy"] >= 0.85, summary
    assert summary["mlp_test_accuracy"] >= 0.85, summary
