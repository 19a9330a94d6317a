"""`predict` on real photos: agrees with the heads stage, lists bad files, says what to run first."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.predict_fixtures import OVERRIDES, PHOTOS, ROOT, classifiers, needs_photos, trained_run  # noqa: F401

# The heads stage stores probabilities rounded to 6 decimals (5e-7); predict runs the same
# float32 program at another padded batch size, whose convolutions may sum in another order
# (measured: 5e-7 at most). 1e-5 leaves room for that, and a wrong crop, resize, normalisation or
# head moves these probabilities by 1e-3 or more.
ATOL = 1e-5


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@needs_photos
@pytest.mark.parametrize("head", ["logreg", "mlp"])
def test_predict_agrees_with_the_heads_stage(trained_run, classifiers, head):
    from pipeline.predict.predict import predict_files

    _, run = trained_run
    clf, fn = classifiers[head]
    stored = json.loads((run.heads_dir / f"predictions_{head}.json").read_text())["predictions"]
    assert len(stored) >= 4
    result = predict_files(clf, [PHOTOS / r["id"] for r in stored], batch_size=4, fn=fn)
    assert not result.bad and len(result.predictions) == len(stored)
    for row, pred in zip(stored, result.predictions):
        assert pred.file == str(PHOTOS / row["id"])
        assert pred.top(clf.classes, 1)[0][0] == row["pred"], row["id"]
        for name, p in row["top"]:
            assert abs(pred.probs[clf.classes.index(name)] - p) <= ATOL, (row["id"], name)
        assert abs(pred.probs.sum() - 1) < 1e-5


@pytest.mark.slow
@needs_photos
def test_bad_files_are_listed_and_skipped(trained_run, classifiers, tmp_path):
    from pipeline.predict import output
    from pipeline.predict.predict import predict_files

    clf, fn = classifiers["logreg"]
    folder = tmp_path / "photos" / "nested"
    folder.mkdir(parents=True)
    good = (PHOTOS / "cat" / "cat.1.jpg").read_bytes()
    (folder / "good.jpg").write_bytes(good)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "notes.png").write_text("not an image")
    (folder / "readme.txt").write_text("ignored: not an image suffix")
    result = predict_files(clf, [tmp_path / "photos", tmp_path / "missing.jpg",
                                 str(PHOTOS / "dog" / "dog.1*.jpg")], batch_size=4, fn=fn)
    bad = {os.path.basename(b.file): b.kind for b in result.bad}
    assert bad == {"empty.jpg": "empty", "truncated.jpg": "truncated", "notes.png": "not_an_image",
                   "missing.jpg": "missing"}
    names = [os.path.basename(p.file) for p in result.predictions]
    assert names[0] == "good.jpg" and len(names) > 2 and all(n.startswith("dog.1") for n in names[1:])
    assert result.predictions[0].top(clf.classes, 1)[0][0] == "cat"
    text = output.render(result, "table", 1)
    assert "skipped 4 file(s)" in text and "truncated" in text
    rows = list(output.render(result, "csv", 1).splitlines())
    assert rows[0] == "file,class,probability,next_1,p_next_1,error" and len(rows) == 1 + len(names) + 4


@pytest.mark.slow
@needs_photos
def test_choose_head(trained_run):
    from pipeline.errors import UserError
    from pipeline.predict import resolve
    from pipeline.heads.primary import choose_primary

    _, run = trained_run
    assert resolve.choose_head(run, None, "auto") == choose_primary(run.metrics, "auto")
    assert resolve.choose_head(run, None, "mlp") == "mlp"   # report.primary_head names it
    assert resolve.choose_head(run, "logreg") == "logreg"
    assert resolve.choose_head(run, "best") in ("logreg", "mlp")
    with pytest.raises(UserError, match="finetune stage"):
        resolve.choose_head(run, "finetune")
    with pytest.raises(UserError, match="choose one of logreg, mlp, best"):
        resolve.choose_head(run, "svm")


@pytest.mark.slow
@needs_photos
def test_predict_cli_json(trained_run, tmp_path, monkeypatch, capsys):
    from pipeline import cli as cli_module

    cache, run = trained_run
    # In this process (the weights and jax are loaded already); main() sets these with setdefault.
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    photos = [str(PHOTOS / "cat" / "cat.2.jpg"), str(PHOTOS / "dog" / "dog.2.jpg")]
    code = cli_module.main(["predict", *photos, "--run", run.keys["heads"][:8], "--head", "mlp",
                            "--format", "json", "--top-k", "1", "--cache-dir", str(cache)])
    assert code == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["head"] == "mlp" and answer["skipped"] == []
    assert [r["class"] for r in answer["predictions"]] == ["cat", "dog"]
    assert all(len(r["next"]) == 1 and r["probability"] > 0.5 for r in answer["predictions"])


@needs_photos
def test_predict_without_a_heads_run_says_what_to_run(tmp_path):
    args = ["--cache-dir", str(tmp_path / "empty"), *[a for o in OVERRIDES for a in ("-S", o)]]
    out = cli("predict", str(PHOTOS / "cat" / "cat.1.jpg"), *args)
    assert out.returncode == 2
    assert "no trained classifier" in out.stderr and "python -m pipeline run heads" in out.stderr
    assert "heads (missing" in out.stderr and "features (missing" in out.stderr
    out = cli("predict", str(PHOTOS / "cat" / "cat.1.jpg"), "--run", "abc", *args)
    assert out.returncode == 2 and "no complete heads output" in out.stderr


@pytest.mark.slow
@needs_photos
def test_a_fused_run_is_refused_with_a_fix_that_names_a_cached_run(trained_run):
    """Heads fused over two backbones need one pixel input per backbone, which predict does not
    take: `load_run` says so, and the rerun it names (`-S backbone.name=<first>`) is a heads run
    the cache already holds (here, the session's lite0 run), so the fix costs nothing to plan."""
    from pipeline import planner, runner
    from pipeline.errors import UserError
    from pipeline.graph import load_graph
    from pipeline.predict import resolve
    from pipeline.progress import QuietReporter

    cache, single = trained_run
    graph = load_graph()
    files = [ROOT / "params.yaml", ROOT / "params.smoke.yaml"]
    fused = planner.resolve_params(graph, files, [*OVERRIDES, "backbone.name=[efficientnet_lite0,efficientnet_lite1]"])
    runner.execute(graph, fused, cache, ["heads"], QuietReporter())
    key = planner.plan(graph, fused, cache)["heads"].key
    with pytest.raises(UserError) as err:
        resolve.load_run(cache, key)
    message = str(err.value)
    assert "fused features of efficientnet_lite0, efficientnet_lite1" in message
    fix = "-S backbone.name=efficientnet_lite0"
    assert fix in message and "--run latest" in message
    again = planner.plan(graph, planner.resolve_params(graph, files, [*OVERRIDES, fix.split()[1]]), cache)
    assert again["heads"].up_to_date and again["heads"].key == single.keys["heads"]
