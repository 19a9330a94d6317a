"""Cost of the inspect stage's two computations.

  gradcam      one Grad-CAM (predicted + true class: one forward to the last map, the rest of the
               backbone and the head, one batched VJP) per image, real efficientnet_lite0 weights
               and a 37-class linear head, at batch 1 and 8; beside a forward pass (`embed` + head)
               of the same batch, so the ratio says what explaining costs over predicting
  map          the 2-D map of 7,349 x 1,280 features (Pets-sized: Oxford-IIIT Pet's image count,
               EfficientNet-Lite's feature width) by each method: PCA to 50, then openTSNE (FFT
               t-SNE), scikit-learn's Barnes-Hut t-SNE, and UMAP where umap-learn is installed;
               ratio against openTSNE (the default) measured in the same run. The features are
               37 seeded Gaussian clusters passed through a ReLU (real Pets features are not in
               this workplace); kNN-10 accuracy of the class on the map is printed as a sanity
               check of the layout, not as a quality ranking

Timings: best of ``--repeats`` after a warm-up (compilation excluded, reported separately) for
Grad-CAM; one run per method for the map (each takes tens of seconds). Load average is printed
beside the table: on a shared machine rerun when it is idle.

Run: python benchmarks/bench_inspect.py [--batches 1,8] [--repeats 3] [--methods opentsne,tsne,umap]
     [--points 7349]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bench_gradcam(batches: list[int], repeats: int, cache: Path) -> list[tuple]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from pipeline.heads.trained import TrainedHead
    from pipeline.heads.logreg import linear_logits
    from pipeline.inspect import gradcam as gc
    from pipeline.inspect import steps
    from pipeline.models import registry

    bb = registry.load_backbone("efficientnet_lite0", cache)
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(0, 0.05, (1280, 37)), jnp.float32)
    head = TrainedHead("logreg", "linear", [f"c{i}" for i in range(37)], {"W": w, "b": jnp.zeros(37)}, {},
                       lambda p, x: linear_logits(p["W"], p["b"], x))
    trunk, top, params, _ = steps.gradcam_model(bb, head, "head_conv")
    cam_fn = gc.make_gradcam(trunk, top)
    fwd = jax.jit(lambda p, x: head.logits(p[1], bb.embed(p[0], x)))
    rows = []
    for b in batches:
        x = jnp.asarray(rng.uniform(0, 255, (b, 224, 224, 3)), jnp.float32)
        cls = jnp.asarray(rng.integers(0, 37, (b, 2)), jnp.int32)
        t0 = time.perf_counter()
        jax.block_until_ready(cam_fn(params, x, cls))
        compile_s = time.perf_counter() - t0
        jax.block_until_ready(fwd(params, x))
        best_cam = best_fwd = float("inf")
        for _ in range(repeats):  # interleaved, so load changes hit both alike
            t0 = time.perf_counter()
            jax.block_until_ready(cam_fn(params, x, cls))
            best_cam = min(best_cam, time.perf_counter() - t0)
            t0 = time.perf_counter()
            jax.block_until_ready(fwd(params, x))
            best_fwd = min(best_fwd, time.perf_counter() - t0)
        rows.append((f"gradcam, batch {b} (2 classes/image)", 1e3 * best_cam / b, 1e3 * best_fwd / b,
                     best_cam / best_fwd, f"compile {compile_s:.1f} s"))
    return rows


def bench_map(methods: list[str], n: int) -> list[tuple]:
    import numpy as np
    from sklearn.neighbors import KNeighborsClassifier

    from pipeline.inspect import mapping

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 37, n)
    centres = rng.normal(0, 1, (37, 1280)).astype(np.float32)
    x = np.maximum(0, centres[labels] * 0.6 + rng.normal(0, 1, (n, 1280)).astype(np.float32))
    out, base = [], None
    for m in methods:
        if m == "umap":
            try:
                import umap  # noqa: F401
            except ImportError:
                print("umap: umap-learn not installed (pip install '.[umap]'); skipped")
                continue
        t0 = time.perf_counter()
        y = mapping.embed_2d(x, m, seed=0)
        s = time.perf_counter() - t0
        cut = int(0.8 * n)
        knn = KNeighborsClassifier(10).fit(y[:cut], labels[:cut]).score(y[cut:], labels[cut:])
        base = s if m == "opentsne" else base
        out.append((m, s, knn))
    return [(f"map {n:,} x 1,280, {m}", s, None, (s / base) if base else None, f"kNN-10 {knn:.3f}")
            for m, s, knn in out]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default="opentsne,tsne,umap")
    ap.add_argument("--points", type=int, default=7349)
    ap.add_argument("--cache-dir", default=str(Path(__file__).resolve().parents[1] / "cache"))
    ap.add_argument("--skip-gradcam", action="store_true")
    ap.add_argument("--skip-map", action="store_true")
    a = ap.parse_args(argv)
    import jax

    print(f"devices={jax.devices()[0].platform} x{jax.device_count()} cpus={os.cpu_count()} "
          f"loadavg={os.getloadavg()[0]:.1f} jax={jax.__version__}")
    rows = []
    if not a.skip_gradcam:
        rows += bench_gradcam([int(b) for b in a.batches.split(",")], a.repeats, Path(a.cache_dir))
    if not a.skip_map:
        rows += bench_map([m for m in a.methods.split(",") if m], a.points)
    print(f"\n| computation | ms/image or s | forward ms/image | ratio | note |\n|---|---:|---:|---:|---|")
    for name, v, f, r, note in rows:
        unit = f"{v:.1f} ms" if name.startswith("gradcam") else f"{v:.1f} s"
        print(f"| {name} | {unit} | {'' if f is None else f'{f:.1f} ms'} | "
              f"{'' if r is None else f'{r:.2f}x'} | {note} |")
    print(f"\nratio: gradcam rows = Grad-CAM / forward pass; map rows = method / opentsne. "
          f"loadavg at end={os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
