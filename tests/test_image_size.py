"""``features.image_size``: a larger input than the backbone's native one keys the features, is the
crop the network sees, and `predict` / `export` use exactly what the features used."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.predict_fixtures import OVERRIDES, PHOTOS, ROOT, needs_photos

SIZE = 256  # Lite0's native 224 crop of a 256 resize becomes a 256 crop of a 293 resize


def _params(extra: list[str]):
    from pipeline import planner
    from pipeline.graph import load_graph

    graph = load_graph()
    return graph, planner.resolve_params(graph, [ROOT / "params.yaml", ROOT / "params.smoke.yaml"],
                                         [*OVERRIDES, *extra])


def test_image_size_keys_the_features_and_everything_after_them(tmp_path):
    from pipeline import planner

    graph, native = _params([])
    _, larger = _params([f"features.image_size={SIZE}"])
    a, b = planner.plan(graph, native, tmp_path), planner.plan(graph, larger, tmp_path)
    assert a["data"].key == b["data"].key
    for stage in ("features", "doctor", "heads"):
        assert a[stage].key != b[stage].key, stage
    # null is the native size: naming the native size is a different key but the same crop.
    assert native["features"].image_size is None


def test_a_backbone_with_a_fixed_input_refuses_another_size():
    from pipeline.models import registry
    from pipeline.params import ParamsError
    from pipeline.features.params import FeaturesParams, input_spec

    with pytest.raises(ParamsError, match=r"features\.image_size: vgg16 reads a fixed 224"):
        input_spec(registry.get_spec("vgg16"), FeaturesParams(image_size=288))
    spec = input_spec(registry.get_spec("efficientnet_lite0"), FeaturesParams(image_size=288))
    assert (spec.input_size, spec.resize_size) == (288, 329)  # the native 224/256 crop fraction


@pytest.mark.slow
@needs_photos
def test_features_predict_and_export_follow_a_larger_image_size(tmp_path, monkeypatch):
    from pipeline import cli, images, planner, resize, runner
    from pipeline.models import registry
    from pipeline.predict import resolve
    from pipeline.predict.model import load_classifier
    from pipeline.predict.predict import predict_files
    from pipeline.progress import QuietReporter
    from pipeline.features.artifact import load_split

    cache = tmp_path / "cache"
    graph, params = _params([f"features.image_size={SIZE}"])
    runner.execute(graph, params, cache, ["heads"], QuietReporter())
    plan = planner.plan(graph, params, cache)
    info = json.loads((plan["features"].out / "info.json").read_text())
    assert info["input_size"] == SIZE

    # The crop the network saw: the stored row is the embedding of the SIZE x SIZE crop.
    feats, _, ids = load_split(plan["features"].out, "test")
    spec = registry.get_spec("efficientnet_lite0")
    backbone = registry.load_backbone(spec.name, cache)
    img = images.decode_image(PHOTOS / ids[0], min_size=spec.at_size(SIZE).resize_size)
    crop = resize.views(img, spec.at_size(SIZE))
    assert crop.shape == (1, SIZE, SIZE, 3)
    row = np.asarray(backbone.embed(backbone.params, crop.astype(np.float32)))[0]
    np.testing.assert_allclose(row, feats[0], rtol=1e-4, atol=1e-4)
    native = np.asarray(backbone.embed(backbone.params, resize.views(img, spec).astype(np.float32)))[0]
    assert np.abs(native - feats[0]).max() > 1e-2  # the native crop is measurably another input

    # predict: same preprocessing, same probabilities as the heads stage stored (see test_predict).
    run = resolve.load_run(cache, plan["heads"].key)
    clf = load_classifier(run, "logreg")
    assert (clf.preprocess.input_size, clf.preprocess.resize_size) == (SIZE, spec.at_size(SIZE).resize_size)
    stored = json.loads((run.heads_dir / "predictions_logreg.json").read_text())["predictions"]
    result = predict_files(clf, [PHOTOS / r["id"] for r in stored], batch_size=4)
    assert not result.bad and len(result.predictions) == len(stored)
    for r, pred in zip(stored, result.predictions):
        for name, p in r["top"]:
            assert abs(pred.probs[clf.classes.index(name)] - p) <= 1e-5, (r["id"], name)

    # export: the folder's preprocessing says SIZE, and the StableHLO model agrees with predict.
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    out = tmp_path / "classifier"
    assert cli.main(["export", "--out", str(out), "--run", plan["heads"].key, "--head", "logreg",
                     "--cache-dir", str(cache), "--format", "stablehlo", "--no-check"]) == 0
    pre = json.loads((out / "preprocess.json").read_text())
    assert (pre["input_size"], pre["resize_size"]) == (SIZE, spec.at_size(SIZE).resize_size)
    photos = [str(PHOTOS / r["id"]) for r in stored[:3]]
    proc = subprocess.run([sys.executable, "-I", str(ROOT / "tests" / "exported_check.py"), str(out), "stablehlo",
                           *photos], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.asarray(json.loads(proc.stdout.strip().splitlines()[-1])["probs"], np.float32)
    want = np.stack([p.probs for p in result.predictions[:3]])
    np.testing.assert_allclose(got, want, atol=1e-4)
