"""The features stage, through the CLI, per backbone and compute dtype, on whatever devices jax sees.

Meant for accelerator hosts (a GPU machine, a TPU VM): it runs `python -m pipeline run features`
on a folder of photos for every backbone in --backbones, in float32 and bfloat16, each in a fresh
cache, and prints images/s from the stage's manifest (compile excluded, decode included), the
compile seconds, and the device kind. On this CPU-only machine it runs too (slowly).

Usage:
  python benchmarks/bench_features_devices.py [--photos ../shared/data/pets-dev] [--copies 8]
      [--backbones efficientnet_lite0 efficientnet_lite1 efficientnet_lite2] [--batch 128]
Backbones whose weights cannot be fetched (no network) are reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def replicate(photos: Path, copies: int, dest: Path) -> Path:
    """A class-folder tree holding `copies` links to every photo (more images, same files)."""
    for cls in sorted(p for p in photos.iterdir() if p.is_dir()):
        out = dest / cls.name
        out.mkdir(parents=True)
        for f in sorted(cls.iterdir()):
            for c in range(copies):
                os.symlink(f.resolve(), out / f"{c}_{f.name}")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "data" / "pets-dev")
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--backbones", nargs="*",
                    default=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
    ap.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    ap.add_argument("--weights-cache", type=Path, default=ROOT / "cache",
                    help="cache root whose weights/ folder is reused across runs")
    args = ap.parse_args()

    import jax

    device = f"{jax.devices()[0].platform}: {jax.device_count()} x {jax.devices()[0].device_kind}"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = replicate(args.photos, args.copies, tmp / "photos")
        n = sum(1 for _ in data.rglob("*.*"))
        print(f"{n} images ({args.copies} copies of {args.photos}); {device}; batch {args.batch}")
        print(f"{'backbone':<20} {'dtype':<9} {'images/s':>9} {'compile s':>10} {'wall s':>8}")
        for name in args.backbones:
            for dtype in args.dtypes:
                cache = tmp / f"cache-{name}-{dtype}"
                cache.mkdir()
                if (args.weights_cache / "weights").is_dir():
                    os.symlink((args.weights_cache / "weights").resolve(), cache / "weights")
                cmd = [sys.executable, "-m", "pipeline", "run", "features", "--cache-dir", str(cache),
                       "-S", "data.source=folder", "-S", f"data.path={data}",
                       "-S", f"backbone.name={name}", "-S", f"backbone.dtype={dtype}",
                       "-S", f"features.batch_size={args.batch}", "-S", f"features.shard_size={args.batch * 8}"]
                out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
                if out.returncode != 0:
                    print(f"{name:<20} {dtype:<9} failed: {out.stderr.strip().splitlines()[-1][:90]}")
                    continue
                (feat,) = [p for p in (cache / "features").iterdir() if not p.name.endswith(".partial")]
                m = json.loads((feat / "manifest.json").read_text())
                s = m["summary"]
                print(f"{name:<20} {dtype:<9} {s['images_per_s']:>9.1f} {s['compile_seconds']:>10.1f} "
                      f"{m['seconds']:>8.1f}")
                shutil.rmtree(cache / "features", ignore_errors=True)


if __name__ == "__main__":
    main()
