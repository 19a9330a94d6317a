"""One real trained classifier for the predict and export tests, made once per test session.

The real stages (data, features with real efficientnet_lite0 weights, heads) on 4 cats-vs-dogs
photos per class and split, through the runner as `run heads` would, into a session cache.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "cats-dogs-dev"
OVERRIDES = ["data.source=folder", f"data.path={PHOTOS}", "data.max_per_class=4", "heads.shots=[]"]
needs_photos = pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"real photos not found at {PHOTOS} "
                                                               "(../shared/data exists only in the workplace)")


@functools.cache
def _train():
    # Memoised here, not only by the fixture's scope: a fixture imported into two test modules is
    # two fixture definitions to pytest, and each would train again.
    from pipeline import planner, runner
    from pipeline.graph import load_graph
    from pipeline.predict import resolve
    from pipeline.progress import QuietReporter

    cache = Path(tempfile.mkdtemp(prefix="predict-run-")) / "cache"
    atexit.register(shutil.rmtree, cache.parent, True)
    graph = load_graph()
    params = planner.resolve_params(graph, [ROOT / "params.yaml", ROOT / "params.smoke.yaml"], OVERRIDES)
    runner.execute(graph, params, cache, ["heads"], QuietReporter())
    key = planner.plan(graph, params, cache)["heads"].key
    return cache, resolve.load_run(cache, key)


@functools.cache
def _classifiers():
    from pipeline.predict.model import load_classifier

    _, run = _train()
    out = {}
    for head in ("logreg", "mlp"):
        clf = load_classifier(run, head)
        out[head] = (clf, clf.jitted())
    return out


@pytest.fixture(scope="session")
def trained_run():
    """(cache dir, `pipeline.predict.resolve.RunRef`) of a finished heads run on real photos."""
    return _train()


@pytest.fixture(scope="session")
def classifiers(trained_run):
    """head name -> (Classifier, its jitted function), built once and shared by the tests."""
    return _classifiers()
