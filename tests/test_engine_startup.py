"""`status` and a no-op `run` decide what is up to date without loading numpy (half their start-up).

Stage modules import numpy at their top; `load_graph(defer_imports=True)` binds it to a module
that runs its code on first use, and `runner.execute` loads it before any stage runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


def test_status_and_a_noop_run_leave_numpy_unloaded(tmp_path):
    cache = tmp_path / "cache"
    code = f"""
import sys
from pipeline import cli
assert cli.main(["status", "--cache-dir", {str(cache)!r}, "--params", "/dev/null"]) == 0
np = sys.modules["numpy"]
assert type(np).__name__ == "_Deferred", type(np)   # imported by the stage modules, never run
"""
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "data" in out.stdout and "missing" in out.stdout

    # Every stage up to date (filled by the same stages with no work: same keys and folders),
    # then the real graph's `run all` is a no-op and leaves numpy unloaded too.
    fill = ["run", "all", "--graph", "benchmarks.product_graph", "--cache-dir", str(cache), "--params", "/dev/null"]
    assert _python(f"from pipeline import cli; assert cli.main({fill!r}) == 0", ROOT).returncode == 0
    noop = f"""
import sys
from pipeline import cli
assert cli.main(["run", "all", "--cache-dir", {str(cache)!r}, "--params", "/dev/null"]) == 0
assert type(sys.modules["numpy"]).__name__ == "_Deferred", type(sys.modules["numpy"])
"""
    out = _python(noop, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "reused" in out.stdout and " ran " not in out.stdout, out.stdout


def test_execute_loads_deferred_numpy_before_stages_run(tmp_path):
    code = f"""
import sys
from pipeline import planner, runner
from pipeline.graph import load_graph
from pipeline.progress import QuietReporter
graph = load_graph("stages", defer_imports=True)
assert type(sys.modules["numpy"]).__name__ == "_Deferred"
graph = load_graph("tests.toy_graph")
runner.execute(graph, planner.resolve_params(graph), {str(tmp_path / 'c')!r}, ["numbers"], QuietReporter())
np = sys.modules["numpy"]
assert type(np).__name__ == "module" and np.arange(4).sum() == 6
import stages.features as f
assert f.np is np and f.np.zeros(2).shape == (2,)
"""
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
