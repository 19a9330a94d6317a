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
