"""How fast the engine answers "what is up to date?", against DVC 3 on the same two-stage graph.

Measures, as wall clock of whole commands (interpreter start-up included, as a user waits):
  - `python -m pipeline status` and a no-op `python -m pipeline run all` on the engine's toy
    two-stage graph (numbers -> total) with everything up to date;
  - `dvc status` and a no-op `dvc repro` on the same two stages written as a dvc.yaml, in the
    same run, when a `dvc` executable is available (`--dvc PATH`, or on PATH);
  - the overhead the engine adds around one stage (keying, folders, manifest, atomic rename),
    in-process, for a stage whose own work is nothing.

Usage:
  python benchmarks/bench_engine.py [--repeats 10] [--dvc /path/to/dvc]
DVC is a peer for measurement only, never a dependency (install it in its own venv).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(cmd: list[str], cwd: Path, env: dict, repeats: int) -> float:
    """Median wall seconds of a command over `repeats` runs (after one warm-up)."""
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def engine_times(work: Path, repeats: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    (work / "params.yaml").write_text("numbers:\n  count: 5\ntotal:\n  scale: 2\n")
    base = [sys.executable, "-m", "pipeline"]
    g = ["--graph", "tests.toy_graph", "--cache-dir", str(work / "cache")]
    subprocess.run(base + ["run", "numbers", "total", *g], cwd=work, env=env, check=True, capture_output=True)
    return {
        "status": timed(base + ["status", *g], work, env, repeats),
        "no-op run": timed(base + ["run", "numbers", "total", *g], work, env, repeats),
    }


DVC_YAML = """\
stages:
  numbers:
    cmd: python -c "import yaml,json; p=yaml.safe_load(open('params.yaml'))['numbers']; json.dump(list(range(p['count'])), open('numbers.json','w'))"
    params: [numbers.count]
    outs: [numbers.json]
  total:
    cmd: python -c "import yaml,json; p=yaml.safe_load(open('params.yaml'))['total']; json.dump(sum(json.load(open('numbers.json')))*p['scale'], open('total.json','w'))"
    deps: [numbers.json]
    params: [total.scale]
    outs: [total.json]
"""


def dvc_times(dvc: str, work: Path, repeats: int) -> dict[str, float]:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(dvc).parent}:{os.environ['PATH']}"}
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=work, env=env, check=True)
    (work / "params.yaml").write_text("numbers:\n  count: 5\ntotal:\n  scale: 2\n")
    (work / "dvc.yaml").write_text(DVC_YAML)
    subprocess.run([dvc, "repro", "-q"], cwd=work, env=env, check=True, capture_output=True)
    return {
        "status": timed([dvc, "status", "-q"], work, env, repeats),
        "no-op run": timed([dvc, "repro", "-q"], work, env, repeats),
    }


def stage_overhead(work: Path, n: int = 200) -> float:
    """Mean seconds the engine spends around a stage that does nothing (forced reruns)."""
    from pipeline import runner
    from pipeline.graph import Graph
    from pipeline.progress import QuietReporter
    from pipeline.stage import Stage

    graph = Graph([Stage(name="noop", run=lambda ctx: None)])
    params = runner.resolve_params(graph)
    runner.execute(graph, params, work, ["noop"], QuietReporter())
    t = time.perf_counter()
    for _ in range(n):
        runner.execute(graph, params, work, ["noop"], QuietReporter(), force=["noop"])
    return (time.perf_counter() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--dvc", default=shutil.which("dvc"), help="dvc executable (peer); optional")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "engine").mkdir()
        ours = engine_times(tmp / "engine", args.repeats)
        theirs = None
        if args.dvc:
            (tmp / "dvc").mkdir()
            theirs = dvc_times(args.dvc, tmp / "dvc", args.repeats)
        (tmp / "overhead").mkdir()
        overhead = stage_overhead(tmp / "overhead")
    print(f"two-stage graph, everything up to date, median of {args.repeats} runs (wall clock, start-up included)")
    print(f"{'command':<12} {'pipeline (s)':>13} {'dvc 3 (s)':>10} {'dvc / pipeline':>15}")
    for k in ours:
        if theirs:
            print(f"{k:<12} {ours[k]:>13.3f} {theirs[k]:>10.3f} {theirs[k] / ours[k]:>14.1f}x")
        else:
            print(f"{k:<12} {ours[k]:>13.3f} {'n/a':>10} {'(no dvc)':>15}")
    print(f"engine overhead around one stage (key, folders, manifest, rename): {overhead * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
