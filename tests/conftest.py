"""Suite-wide settings, applied before any test module imports jax.

One XLA compilation cache (and `pipeline.exported` trace store) for the whole test session, the
way one user's runs share ``<cache>/jax``: most tests build a fresh pipeline cache under their
tmp_path, and without this every small heads run compiled the same L-BFGS and MLP programs
again (about a third of the suite's time on a 2-core machine). The CLI keeps a
JAX_COMPILATION_CACHE_DIR it finds, so the stages that tests run in subprocesses share it too.
Tests about the cache itself set their own (`test_exported`, `test_predict`, `test_export`),
and `test_first_run` (a newcomer's offline `run all`) drops it: a first run compiles everything.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _dir = tempfile.mkdtemp(prefix="pipeline-tests-jax-")
    atexit.register(functools.partial(shutil.rmtree, _dir, ignore_errors=True))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _dir
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")  # as the CLI


def pytest_addoption(parser) -> None:
    parser.addoption("--thorough", action="store_true", default=False,
                     help="fault-injection tests kill runs at many more points (minutes, not seconds)")


def _thorough(request) -> bool:
    return bool(request.config.getoption("--thorough"))


import pytest  # noqa: E402 -- after the environment above is set


@pytest.fixture(scope="session")
def thorough(request) -> bool:
    """True under ``pytest --thorough``: sweep more kill points."""
    return _thorough(request)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """`tests.small_run`: the real pipeline over pets-dev with a smoke profile, run once through
    the CLI; shared by `test_report` (its outputs) and `test_end_to_end` (what a change reruns)."""
    from tests.small_run import make_small_run

    run = make_small_run(tmp_path_factory.mktemp("small_run"))
    if isinstance(run, str):
        pytest.skip(run)
    return run


@pytest.fixture(scope="session")
def hostile_run(tmp_path_factory):
    """The real stages (`tests.short_graph`: data .. heads, trunk, inspect, report) run once over
    `tests.hostile_fixtures`' folder of hostile names, with every file-system event counted.

    Shared by `test_hostile_names` (what the names do to each output) and `test_faults` (the
    uninterrupted run that killed runs must reproduce byte for byte).
    """
    from types import SimpleNamespace

    import yaml

    from tests.hostile_fixtures import PHOTOS, make_hostile_folder
    from tests.integrity_helpers import count_events, killed

    if not PHOTOS.is_dir():
        pytest.skip(f"real photos not found at {PHOTOS} (../shared/data exists only in the workplace)")

    base = tmp_path_factory.mktemp("hostile")
    photos = make_hostile_folder(base)
    params = base / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"source": "folder", "path": str(photos), "val_fraction": 0.3, "test_fraction": 0.3,
                 "max_per_class": 8},
        "heads": {"shots": [1], "shot_draws": 1, "logreg": {"c_per_decade": 1, "refine": False},
                  "mlp": {"max_epochs": 8}},
        "inspect": {"photos": 2, "max_mistakes": 4, "max_correct": 4},
        # Small shards, so that a kill can land between two of them (features and trunk).
        "features": {"batch_size": 4, "shard_size": 4},
        "finetune": {"enabled": True, "batch_size": 4, "shard_size": 4},   # trunk: sharded activations
    }))
    root = base / "cache"
    opts = ["--graph", "tests.short_graph", "--params", str(params), "--cache-dir", str(root)]
    events = base / "events.json"
    out = killed(0, "run", "report", *opts, count=events)
    assert out.returncode == 0, out.stdout + out.stderr
    return SimpleNamespace(base=base, photos=photos, params=params, root=root, opts=opts,
                           events=count_events(events), stdout=out.stdout, stderr=out.stderr)
