"""How long the heads stage takes on Oxford-IIIT Pet-sized features, and JAX vs scikit-learn sweeps.

Measures, on 7,349 x 1,280 features in 37 classes (train 2,944 / val 736 / test 3,669, the Pets
trainval/test sizes with 20 % of trainval as val; ``--dim 2560``: two such 1,280 blocks side by
side, the width of two fused backbones; ``--shape few``: train 754 / val 84 / test 817, the
~23-photos-per-breed split whose 2-per-class val makes the heads choose by 5-fold CV):
  1. `python -m pipeline run heads` as a user waits (interpreter start-up included): once with an
     empty XLA compilation cache, then after each of `--repeats` heads changes of two kinds: one
     the linear probe reads (-S heads.logreg.cv_tie=..., the whole sweep again) and one it does
     not (-S heads.mlp.weight_decay=..., the probe's fit reused from `pipeline.heads.memo`);
  2. the logreg hyperparameter sweep alone (grid, half-step refinement, refit on train+val; the
     stage's own `fit_logreg`), with solver=sklearn and solver=jax, each in a fresh interpreter,
     JAX once with a cold and once with a warm compilation cache; the ratio is printed.

The features are "real-ish": class means and within-class variation of real efficientnet_lite0
features of the 111 pets-dev photos (../shared/data, computed once through the registry and kept
under the cache), resampled with extra per-dimension noise and class mixing to Pets-like
difficulty. Without those photos the script falls back to purely synthetic features and says so.

This module is also the stage graph the CLI runs (`--graph benchmarks.bench_heads`): a stand-in
`features` stage that publishes the prepared folder, and the real `heads` stage.

Usage:
  python benchmarks/bench_heads.py [--repeats 3] [--work DIR] [--dim 1280|2560] [--shape pets|few]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.params import spec  # noqa: E402
from pipeline.stage import Stage, StageContext  # noqa: E402
from stages import heads  # noqa: E402

SHAPES = {"pets": {"train": 2944, "val": 736, "test": 3669}, "few": {"train": 754, "val": 84, "test": 817}}
SPLITS = dict(SHAPES["pets"])  # set from --shape in main()
K, D = 37, 1280


@dataclasses.dataclass(frozen=True)
class BenchFeaturesParams:
    path: str = spec("", help="prepared features folder to publish as the features stage's output")


def _publish(ctx: StageContext) -> dict:
    src = Path(ctx.params["bench_features"].path)
    for item in src.iterdir():
        if item.is_dir():
            shutil.copytree(item, Path(ctx.out_dir) / item.name)
        else:
            shutil.copy2(item, Path(ctx.out_dir) / item.name)
    return {"source": str(src)}


def _no_drops(ctx: StageContext) -> dict:
    """The doctor in report mode, as heads sees it: an empty drop list (what `run heads` reads)."""
    from pipeline.doctor import drops

    (Path(ctx.out_dir) / drops.FILE).write_text(json.dumps({"ids": {}}))
    return {"dropped": 0}


STAGES = [Stage(name="features", run=_publish, sections=("bench_features",),
                schemas={"bench_features": BenchFeaturesParams}),
          Stage(name="doctor", run=_no_drops, deps=("features",)), heads.STAGE]


# --------------------------------------------------------------------------------- features

def real_prototypes(cache: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(111, 1280) efficientnet_lite0 features of pets-dev and labels, or None without the photos."""
    photos = ROOT.parent / "shared" / "data" / "pets-dev"
    path = cache / "bench" / "pets-dev-efficientnet_lite0.npz"
    if path.exists():
        with np.load(path) as f:
            return f["x"], f["y"]
    if not photos.is_dir():
        return None
    import jax

    from pipeline import images, resize
    from pipeline.models import registry

    bb = registry.load_backbone("efficientnet_lite0", cache)
    embed = jax.jit(bb.embed)
    classes = sorted(p.name for p in photos.iterdir() if p.is_dir())
    px, ys = [], []
    for c, name in enumerate(classes):
        for f in sorted((photos / name).iterdir()):
            px.append(resize.resize_and_crop(images.decode_image(f), bb.spec))
            ys.append(c)
    px = np.stack(px).astype(np.float32)
    x = np.concatenate([np.asarray(embed(bb.params, px[i:i + 16])) for i in range(0, len(px), 16)])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=np.array(ys))
    return x, np.array(ys)


def make_features(out: Path, cache: Path, seed: int = 0, blocks: int = 1) -> str:
    """Write a Pets-sized features folder; return a description of how it was made.

    ``blocks`` > 1 writes that many independently resampled 1,280-wide blocks side by side (the
    width and the per-block scale of fused backbones; the stage sees one folder).
    """
    if blocks > 1:
        parts = []
        for b in range(blocks):
            how = make_features(out / f"block{b}", cache, seed + 100 * b)
            parts.append(out / f"block{b}")
        out.mkdir(parents=True, exist_ok=True)
        for item in ("classes.json",):
            shutil.copy2(parts[0] / item, out / item)
        for split in SPLITS:
            (out / split).mkdir(exist_ok=True)
            x = np.concatenate([np.load(pp / split / "features.npy") for pp in parts], axis=1)
            np.save(out / split / "features.npy", x)
            for item in ("labels.npy", "ids.json"):
                shutil.copy2(parts[0] / split / item, out / split / item)
        info = json.loads((parts[0] / "info.json").read_text())
        (out / "info.json").write_text(json.dumps({**info, "feature_dim": D * blocks}))
        for pp in parts:
            shutil.rmtree(pp)
        return f"{blocks} blocks of {how}"
    rng = np.random.default_rng(seed)
    n = sum(SPLITS.values())
    y = rng.integers(0, K, n).astype(np.int32)
    proto = real_prototypes(cache)
    if proto is not None:
        f, fy = (a.astype(np.float64) for a in proto)
        mu = np.stack([f[fy == c].mean(0) for c in range(K)])          # (K, D) real class means
        resid = f - mu[fy.astype(int)]                                  # (111, D) real within-class
        # A sample: its class mean mixed with up to 60 % of another class's (confusable breeds),
        # plus real within-class variation and per-dimension noise of the same scale, then ReLU
        # (the real features are pooled ReLU6 activations). Logreg lands near 85-90 % on it.
        lam = rng.uniform(0.4, 1.0, (n, 1))
        mix = lam * mu[y] + (1 - lam) * mu[rng.integers(0, K, n)]
        z = rng.normal(size=(n, len(resid))) @ resid / np.sqrt(len(resid)) * 1.5
        e = rng.normal(size=(n, D)) * resid.std(0) * 2.5
        x = np.maximum(mix + z + e, 0).astype(np.float32)
        how = "real-ish (efficientnet_lite0 features of the 111 pets-dev photos, resampled)"
    else:
        basis = rng.normal(size=(256, D)).astype(np.float32) / 16 * (np.arange(1, 257) ** -0.5)[:, None] * 4
        means = rng.normal(size=(K, 256)).astype(np.float32) * 0.3
        x = np.maximum((means[y] + rng.normal(size=(n, 256))) @ basis + 0.2, 0).astype(np.float32)
        how = "synthetic (no ../shared/data photos: random low-rank class means + noise, ReLU)"
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.json").write_text(json.dumps([f"class_{c:02d}" for c in range(K)]))
    start = 0
    for split, size in SPLITS.items():
        d = out / split
        d.mkdir(exist_ok=True)
        np.save(d / "features.npy", x[start:start + size])
        np.save(d / "labels.npy", y[start:start + size])
        (d / "ids.json").write_text(json.dumps([f"{split}/{i:05d}.jpg" for i in range(size)]))
        start += size
    (out / "info.json").write_text(json.dumps({"backbone": "bench", "feature_dim": D, "dtype": "float32",
                                               "splits": SPLITS}))
    return how


# --------------------------------------------------------------------------------- measurements

def cli_run(work: Path, feats: Path, overrides: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one `python -m pipeline run heads` (start-up included).

    CPU time (user + system of the child) is the figure that does not depend on what else the
    machine runs; on 2 cores, a quiet machine's wall time lies between CPU / 2 and CPU.
    """
    cmd = [sys.executable, "-m", "pipeline", "run", "heads", "--graph", "benchmarks.bench_heads",
           "--cache-dir", str(work / "cache"), "--params", str(work / "params.yaml"),
           "-S", f"bench_features.path={feats}", *[a for o in overrides for a in ("-S", o)]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
    return dt, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


SWEEP = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np, jax
from pathlib import Path
from pipeline.params import parse_section
from stages import heads
feats, solver, cc = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
if cc:
    jax.config.update("jax_compilation_cache_dir", cc)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
from pipeline.heads import inputs, probe
data = {s: tuple(np.asarray(a) if i < 2 else a for i, a in enumerate(inputs.load_features(feats)[s]))
        for s in ("train", "val", "test")}
z = {s: data[s][0] for s in data}
# One scaling, chosen on val: the same fits on both sides (the stage's default, standardize auto,
# runs this sweep twice).
p = parse_section(heads.HeadsParams, {"standardize": False, "logreg": {"solver": solver, "select": "val"}}, "heads")
t = time.perf_counter()
r = probe.fit_logreg(p, data, 37)
sweep_s = time.perf_counter() - t
from pipeline.heads.logreg import linear_logits
acc = float(np.mean(linear_logits(r["W"], r["b"], z["test"]).argmax(1) == data["test"][1]))
print(json.dumps({"sweep_s": sweep_s, "C": r["chosen"]["C"], "fits": len(r["chosen"]["sweep"]) + 1,
                  "iters": sum(x["n_iter"] for x in r["chosen"]["sweep"]) + r["chosen"].get("refit_n_iter", 0),
                  "test_accuracy": acc, "process_s": time.perf_counter() - t0}))
"""


def sweep_run(feats: Path, solver: str, compile_cache: str) -> dict:
    r = subprocess.run([sys.executable, "-c", SWEEP, str(feats), solver, compile_cache], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if r.returncode:
        raise RuntimeError(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="heads changes timed after the first run")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--dim", type=int, default=D, choices=[D, 2 * D], help="feature width (2560: two fused backbones)")
    ap.add_argument("--shape", default="pets", choices=list(SHAPES), help="split sizes (few: the CV path)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the sklearn-vs-jax sweep comparison")
    args = ap.parse_args()
    SPLITS.clear()
    SPLITS.update(SHAPES[args.shape])
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_heads_"))
    if (work / "cache").exists():
        shutil.rmtree(work / "cache")
    feats = work / "features"
    how = make_features(feats, ROOT / "cache", blocks=args.dim // D)
    (work / "params.yaml").write_text("heads: {}\n")
    print(f"features: {how}; {sum(SPLITS.values())} x {args.dim}, {K} classes, splits {SPLITS}", flush=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)

    first = cli_run(work, feats, [])

    def latest_seconds() -> dict:
        latest = max((work / "cache" / "heads").glob("*/metrics.json"), key=lambda p: p.stat().st_mtime)
        return json.loads(latest.read_text())

    # Two kinds of heads change: one the probe reads (cv_tie: the same work, a new key, so the
    # whole C sweep runs again) and one it does not (the MLP's weight decay: the probe's fit is
    # reused from pipeline.heads.memo and only the MLP and the learning curve run).
    kinds = {"probe change (-S heads.logreg.cv_tie=0.25+0.01i)": lambda i: f"heads.logreg.cv_tie={0.25 + 0.01 * i:.2f}",
             "MLP change (-S heads.mlp.weight_decay=1e-4*(1+i))": lambda i: f"heads.mlp.weight_decay={1e-4 * (1 + i):.6g}"}
    timed, inside = {}, {}
    for kind, override in kinds.items():
        timed[kind] = [cli_run(work, feats, [override(i)]) for i in range(1, args.repeats + 1)]
        inside[kind] = latest_seconds()["seconds"]
    m = latest_seconds()
    print(f"\n`python -m pipeline run heads` wall seconds, start-up included:")
    print(f"  first run (features stand-in + heads, empty XLA cache): {first[0]:.2f} (CPU {first[1]:.2f})")
    for kind, changes in timed.items():
        print(f"  after a {kind}, x{args.repeats}: "
              f"{', '.join(f'{w:.2f} (CPU {c:.2f})' for w, c in changes)}; median wall "
              f"{statistics.median(w for w, _ in changes):.2f} (target < 10)")
        print("    inside the stage (last run): " + ", ".join(f"{k} {v:.2f}" for k, v in inside[kind].items()))
    print("  test accuracy: " + ", ".join(f"{h} {m['heads'][h]['test']['accuracy']:.4f}" for h in ("logreg", "mlp")))
    print(f"  C chosen by: {m['heads']['logreg']['hyperparameters']['select']}; "
          f"MLP best epoch {m['heads']['mlp']['hyperparameters']['best_epoch']}")
    if args.no_sweep:
        print(f"machine load average at end: {os.getloadavg()[0]:.1f}")
        return

    cc = str(work / "sweep-xla-cache")
    sk = sweep_run(feats, "sklearn", "")
    jx_cold = sweep_run(feats, "jax", cc)
    jx_warm = sweep_run(feats, "jax", cc)
    print("\nlogreg sweep (grid + refinement + refit on train+val), fresh interpreter each:")
    for name, r in (("sklearn", sk), ("jax, cold XLA cache", jx_cold), ("jax, warm XLA cache", jx_warm)):
        print(f"  {name:22s} {r['sweep_s']:7.2f} s  ({r['fits']} fits, {r['iters']} L-BFGS iterations, "
              f"C={r['C']:.3g}, test accuracy {r['test_accuracy']:.4f})")
    print(f"  sklearn / jax time ratio: {sk['sweep_s'] / jx_cold['sweep_s']:.2f} (cold), "
          f"{sk['sweep_s'] / jx_warm['sweep_s']:.2f} (warm); > 1 means jax is faster")
    print(f"machine load average at end: {os.getloadavg()[0]:.1f}")
    result = {"features": how, "first_run": {"wall_s": first[0], "cpu_s": first[1]},
              "after_change": {kind: [{"wall_s": w, "cpu_s": c} for w, c in changes] for kind, changes in timed.items()},
              "stage_seconds": inside,
              "sweep": {"sklearn": sk, "jax_cold": jx_cold, "jax_warm": jx_warm}}
    (work / "bench_heads.json").write_text(json.dumps(result, indent=1))
    print(f"results: {work / 'bench_heads.json'}")


if __name__ == "__main__":
    main()
