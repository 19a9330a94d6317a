"""Data doctor: the near-duplicate search against numpy, and the stage on the dev folders.

1. The all-pairs top-k search (`pipeline.doctor.neighbors.top_k`: blocked, jitted, sharded over
   the local devices) against a numpy peer doing the same blocked matmul + argpartition with the
   machine's BLAS, on unit rows of D = 1280 (efficientnet_lite0's width), at N up to Pets' size
   (7,390). Prints seconds after compilation, the achieved GFLOP/s (2 N^2 D flops) and the ratio.
2. The doctor stage as a user runs it (`python -m pipeline run doctor`, a fresh process, default
   params) on pets-dev and cats-dogs-dev, after the features are cached: the stage's own
   seconds from its manifest, which include importing jax and compiling.

    python benchmarks/bench_doctor.py [--sizes 1000 4000 7390] [--no-stage]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def numpy_top_k(x: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The peer: blocked x @ x.T with BLAS, self masked, argpartition + sort of the k best."""
    n = len(x)
    sims = np.empty((n, k), np.float32)
    idx = np.empty((n, k), np.int64)
    for a in range(0, n, block):
        s = x[a:a + block] @ x.T                         # (b, N)
        s[np.arange(len(s)), np.arange(a, a + len(s))] = -np.inf
        part = np.argpartition(-s, k, axis=1)[:, :k]
        ps = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-ps, axis=1)
        sims[a:a + block] = np.take_along_axis(ps, order, axis=1)
        idx[a:a + block] = np.take_along_axis(part, order, axis=1)
    return sims, idx


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def search_table(sizes: list[int], d: int, k: int) -> None:
    import jax

    from pipeline.doctor import neighbors

    print(f"near-duplicate search, D={d}, k={k}, {jax.device_count()} {jax.default_backend()} device(s)")
    print(f"{'N':>8s} {'flops':>10s} {'ours s':>8s} {'GFLOP/s':>8s} {'numpy s':>8s} {'GFLOP/s':>8s} "
          f"{'numpy/ours':>10s} {'same top-1':>10s}")
    rng = np.random.default_rng(0)
    for n in sizes:
        x = neighbors.normalize(rng.normal(size=(n, d)).astype(np.float32))
        neighbors.top_k(x, k)                                      # compile
        ours = best_of(lambda: neighbors.top_k(x, k))
        peer = best_of(lambda: numpy_top_k(x, k))
        same = np.mean(neighbors.top_k(x, k)[1][:, 0] == numpy_top_k(x, k)[1][:, 0])
        flops = 2.0 * n * n * d
        print(f"{n:8d} {flops:10.2e} {ours:8.3f} {flops / ours / 1e9:8.1f} {peer:8.3f} {flops / peer / 1e9:8.1f} "
              f"{peer / ours:10.2f} {same:10.3f}")


def stage_table(data: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print("\ndoctor stage, default params, fresh process (features already cached); cold = first run "
          "(empty XLA cache), warm = rerun with --force doctor")
    print(f"{'folder':>14s} {'images':>7s} {'cold s':>7s} {'warm s':>7s} {'neighbors':>9s} {'pixels':>7s} {'labels':>7s}")

    def seconds(cache: Path) -> tuple[float, dict]:
        out = next((cache / "doctor").glob("*/manifest.json"))
        return json.loads(out.read_text())["seconds"], json.loads((out.parent / "doctor.json").read_text())

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("pets-dev", "cats-dogs-dev"):
            cache = Path(tmp) / name
            base = [sys.executable, "-m", "pipeline", "run", "--cache-dir", str(cache),
                    "-S", "data.source=folder", "-S", f"data.path={data / name}"]
            for cmd in ([*base, "features"], [*base, "doctor"], [*base, "doctor", "--force", "doctor"]):
                proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(proc.stderr[-2000:])
                if cmd[-1] == "doctor" and "--force" not in cmd:
                    cold, _ = seconds(cache)
            warm, found = seconds(cache)
            s = found["seconds"]
            print(f"{name:>14s} {sum(found['images'].values()):7d} {cold:7.2f} {warm:7.2f} {s['neighbors']:9.2f} "
                  f"{s['pixels']:7.2f} {s['labels']:7.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 7390])
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--no-stage", action="store_true", help="skip the stage timings")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    search_table(args.sizes, args.dim, args.k)
    if not args.no_stage and args.data.is_dir():
        stage_table(args.data)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
