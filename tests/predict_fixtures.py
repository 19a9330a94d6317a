"""One real trained classifier for the predict and export tests, made once per test session.

The real stages (data, features with real efficientnet_lite0 weights, heads) on 4 cats-vs-dogs
photos per class and split, through the runner as `run heads` would, into a session cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "cats-dogs-dev"
OVERRIDES = ["data.source=folder", f"data.path={PHOTOS}", "data.max_per_class=4", "heads.shots=[]"]
needs_photos = pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"real photos not found at {PHOTOS} "
                                                               "(../shared/data exists only in the workplace)")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """(cache dir, `pipeline.predict.resolve.RunRef`) of a finished heads run on real photos."""
    from pipeline import runner
    from pipeline.graph import load_graph
    from pipeline.predict import resolve
    from pipeline.progress import QuietReporter

    cache = tmp_path_factory.mktemp("predict") / "cache"
    graph = load_graph()
    params = runner.resolve_params(graph, [ROOT / "params.yaml", ROOT / "params.smoke.yaml"], OVERRIDES)
    runner.execute(graph, params, cache, ["heads"], QuietReporter())
    key = runner.plan(graph, params, cache)["heads"].key
    return cache, resolve.load_run(cache, key)


@pytest.fixture(scope="session")
def classifiers(trained_run):
    """head name -> (Classifier, its jitted function), built once and shared by the tests."""
    from pipeline.predict.model import load_classifier

    _, run = trained_run
    out = {}
    for head in ("logreg", "mlp"):
        clf = load_classifier(run, head)
        out[head] = (clf, clf.jitted())
    return out
