"""The newcomer's first wait: README command 1's `python -m pipeline run all` on the embedded demo
sample, cold, per stage; then the same `run all` after a head-only change.

Each run starts from nothing a first run would have: a fresh cache folder (so converted weights,
memos and the XLA compilation cache under it are empty), an empty home folder, no
JAX_COMPILATION_CACHE_DIR. Printed, median of ``--runs``:

  per stage   seconds as the runner's end-of-run table gives them (wall), and the total
  cpu         user+sys CPU seconds of the whole process: on a shared machine, where wall time
              depends on the neighbours, CPU time divided by the core count is the better guess
              of a quiet machine's wall time
  report      size of report.html
  head change `run all -S heads.logreg.cv_tie=0.5` on the warm cache of the cold run: which
              stages reran and how long it took

The load average is printed before and after: compare figures taken under similar load only.

Run: python benchmarks/bench_demo.py [--runs 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAD_CHANGE = "heads.logreg.cv_tie=0.5"
_ROW = re.compile(r"^(\w+)\s+(ran|reused)\s+([\d.]+)s", re.M)


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update({"HOME": str(tmp / "home"), "TFDS_DATA_DIR": str(tmp / "tfds"), "PYTHONPATH": str(ROOT)})
    (tmp / "home").mkdir(parents=True, exist_ok=True)
    return env


def run_all(tmp: Path, *extra: str) -> dict:
    """One `run all` in `tmp`'s cache: wall seconds, CPU seconds, per-stage seconds of stages that ran."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "all", "--cache-dir", str(tmp / "cache"), *extra],
                          cwd=ROOT, env=_env(tmp), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"run all failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    stages = {m[1]: float(m[3]) for m in _ROW.finditer(proc.stdout) if m[2] == "ran"}
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "stages": stages, "stdout": proc.stdout}


def report_size(tmp: Path) -> int:
    pages = sorted((tmp / "cache" / "report").glob("*/report.html"), key=lambda p: p.stat().st_mtime)
    return pages[-1].stat().st_size if pages else 0


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="cold runs (the median is printed)")
    ap.add_argument("--keep", type=str, default="", help="keep the last run's cache folder here")
    args = ap.parse_args()

    print(f"load average before: {_load()} ({os.cpu_count()} CPU cores)")
    cold, changed, sizes = [], [], []
    for i in range(args.runs):
        tmp = Path(tempfile.mkdtemp(prefix="bench-demo-"))
        try:
            cold.append(run_all(tmp))
            sizes.append(report_size(tmp))
            changed.append(run_all(tmp, "-S", HEAD_CHANGE))
            print(f"run {i + 1}: cold {cold[-1]['wall']:.1f}s (cpu {cold[-1]['cpu']:.1f}s), report "
                  f"{sizes[-1] / 1e6:.2f} MB; after a head change {changed[-1]['wall']:.1f}s "
                  f"(cpu {changed[-1]['cpu']:.1f}s); load {_load()}", flush=True)
            if args.keep and i == args.runs - 1:
                shutil.rmtree(args.keep, ignore_errors=True)
                shutil.copytree(tmp, args.keep, symlinks=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def med(values):
        return statistics.median(values) if values else float("nan")

    names = list(dict.fromkeys(n for r in cold for n in r["stages"]))
    print(f"\ncold `run all` on the demo sample, median of {args.runs} (seconds, wall):")
    for n in names:
        print(f"  {n:12s} {med([r['stages'].get(n, 0.0) for r in cold]):7.1f}")
    print(f"  {'total':12s} {med([r['wall'] for r in cold]):7.1f}  (process wall, start-up included; "
          f"cpu {med([r['cpu'] for r in cold]):.1f}s = {med([r['cpu'] for r in cold]) / (os.cpu_count() or 1):.1f}s "
          f"on {os.cpu_count()} cores)")
    print(f"  report.html  {med(sizes) / 1e6:7.2f} MB")
    reran = list(dict.fromkeys(n for r in changed for n in r["stages"]))
    print(f"\n`run all -S {HEAD_CHANGE}` after it, median of {args.runs}:")
    for n in reran:
        print(f"  {n:12s} {med([r['stages'].get(n, 0.0) for r in changed]):7.1f}")
    print(f"  {'total':12s} {med([r['wall'] for r in changed]):7.1f}  (cpu {med([r['cpu'] for r in changed]):.1f}s)")
    print(f"\nload average after: {_load()}")


if __name__ == "__main__":
    main()
