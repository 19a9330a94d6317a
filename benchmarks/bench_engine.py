"""How fast the engine answers "what is up to date?", against DVC 3 on the same graphs.

Measures, as wall clock of whole commands (interpreter start-up included, as a user waits):
  - the product's own graph (data -> features -> ... -> report, every stage): `python -m
    pipeline status` and a no-op `python -m pipeline run all` with everything up to date, the
    data stage keyed by the digests of a folder of real photos (the demo sample's, copied), read
    through its stat memo. The cache is filled by `benchmarks/product_graph.py` (the same stages,
    keys and folders, with no work), so the real commands find every stage up to date;
  - `dvc status` and a no-op `dvc repro` on the same graph written as a dvc.yaml (each stage's
    params sections, its upstream stages' outputs and, for data, the photo folder as deps; DVC
    keeps its own stat memo of the folder's hashes), in the same run, when a `dvc` executable is
    available (`--dvc PATH`, or on PATH);
  - the same on the engine's toy two-stage graph (numbers -> total), which imports no stage code;
  - the overhead the engine adds around one stage (keying, folders, manifest, atomic rename),
    in-process, for a stage whose own work is nothing.

Usage:
  python benchmarks/bench_engine.py [--repeats 10] [--dvc /path/to/dvc]
DVC is a peer for measurement only, never a dependency (install it in its own venv).
"""

from __future__ import annotations

import argparse
import json
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


def _product_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def product_setup(work: Path) -> list[str]:
    """A cache in which every stage of the product graph is up to date; returns the common flags."""
    sample = ROOT / "pipeline" / "sample" / "pets"
    shutil.copytree(sample, work / "photos")
    (work / "params.yaml").write_text(f"data:\n  source: folder\n  path: {work / 'photos'}\n")
    flags = ["--params", str(work / "params.yaml"), "--cache-dir", str(work / "cache")]
    subprocess.run([sys.executable, "-m", "pipeline", "run", "all", *flags, "--graph", "benchmarks.product_graph"],
                   cwd=work, env=_product_env(), check=True, capture_output=True)
    return flags


def product_times(work: Path, repeats: int) -> dict[str, float]:
    flags = product_setup(work)
    base = [sys.executable, "-m", "pipeline"]
    status = subprocess.run(base + ["status", "--json", *flags], cwd=work, env=_product_env(), check=True,
                            capture_output=True, text=True)
    stale = [s["name"] for s in json.loads(status.stdout)["stages"] if not s["up_to_date"]]
    if stale:
        raise RuntimeError(f"product graph: {stale} not up to date after the filling run")
    return {
        "status": timed(base + ["status", *flags], work, _product_env(), repeats),
        "no-op run": timed(base + ["run", "all", *flags], work, _product_env(), repeats),
    }


def product_dvc_yaml(work: Path) -> str:
    """The product graph as a dvc.yaml: the same stages, params sections and dependencies."""
    import yaml

    from pipeline.graph import load_graph

    graph = load_graph()
    params = subprocess.run([sys.executable, "-m", "pipeline", "params", "--params", str(work / "params.yaml")],
                            cwd=work, env=_product_env(), check=True, capture_output=True, text=True).stdout
    (work / "params.yaml").write_text(params)  # every section, as `pipeline params` resolves them
    stages = {}
    for name, s in graph.stages.items():
        deps = [f"out/{d}.json" for d in s.deps] + (["photos"] if name == "data" else [])
        stages[name] = {"cmd": f"python -c \"import os; os.makedirs('out', exist_ok=True); "
                               f"open('out/{name}.json', 'w').write('{{}}')\"",
                        "params": list(s.sections), "outs": [f"out/{name}.json"]}
        if deps:
            stages[name]["deps"] = deps
    return yaml.safe_dump({"stages": stages}, sort_keys=False)


def product_dvc_times(dvc: str, work: Path, repeats: int) -> dict[str, float]:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(dvc).parent}:{os.environ['PATH']}"}
    shutil.copytree(ROOT / "pipeline" / "sample" / "pets", work / "photos")
    (work / "params.yaml").write_text(f"data:\n  source: folder\n  path: {work / 'photos'}\n")
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=work, env=env, check=True)
    (work / "dvc.yaml").write_text(product_dvc_yaml(work))
    subprocess.run([dvc, "repro", "-q"], cwd=work, env=env, check=True, capture_output=True)
    return {
        "status": timed([dvc, "status", "-q"], work, env, repeats),
        "no-op run": timed([dvc, "repro", "-q"], work, env, repeats),
    }


def stage_overhead(work: Path, n: int = 200) -> float:
    """Mean seconds the engine spends around a stage that does nothing (forced reruns)."""
    from pipeline import planner, runner
    from pipeline.graph import Graph
    from pipeline.progress import QuietReporter
    from pipeline.stage import Stage

    graph = Graph([Stage(name="noop", run=lambda ctx: None)])
    params = planner.resolve_params(graph)
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
    print(f"cpus={os.cpu_count()} loadavg={os.getloadavg()[0]:.1f} (other processes share these cores)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tables = []
        for title, ours_fn, dvc_fn in (
                ("product graph (every stage, data keyed by 111 photos' digests)", product_times, product_dvc_times),
                ("toy two-stage graph (numbers -> total)", engine_times, dvc_times)):
            (tmp / "engine").mkdir()
            ours = ours_fn(tmp / "engine", args.repeats)
            theirs = None
            if args.dvc:
                (tmp / "dvc").mkdir()
                theirs = dvc_fn(args.dvc, tmp / "dvc", args.repeats)
            shutil.rmtree(tmp / "engine")
            shutil.rmtree(tmp / "dvc", ignore_errors=True)
            tables.append((title, ours, theirs))
        (tmp / "overhead").mkdir()
        overhead = stage_overhead(tmp / "overhead")
    for title, ours, theirs in tables:
        print(f"\n{title}: everything up to date, median of {args.repeats} runs (wall clock, start-up included)")
        print(f"{'command':<12} {'pipeline (s)':>13} {'dvc 3 (s)':>10} {'dvc / pipeline':>15}")
        for k in ours:
            if theirs:
                print(f"{k:<12} {ours[k]:>13.3f} {theirs[k]:>10.3f} {theirs[k] / ours[k]:>14.1f}x")
            else:
                print(f"{k:<12} {ours[k]:>13.3f} {'n/a':>10} {'(no dvc)':>15}")
    print(f"\nengine overhead around one stage (key, folders, manifest, rename): {overhead * 1e3:.2f} ms")
    print(f"loadavg at end={os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
