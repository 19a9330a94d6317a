"""How far bfloat16 compute moves the features from float32 (`backbone.dtype: bfloat16`).

For each backbone with real weights here (the EfficientNet-Lite family), embeds the same real
photos in float32 and in bfloat16 and prints, per backbone: median and worst relative L2 drift of
a feature vector, the lowest cosine similarity, how often the ImageNet top-1 class changes, and
images/s of both. bfloat16 is meant for accelerators (TPU, recent GPUs); on a CPU it is usually
slower, which the table shows too.

Usage:
  python benchmarks/bench_bf16_drift.py [--photos ../shared/data/pets-dev] [--limit 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "data" / "pets-dev")
    ap.add_argument("--limit", type=int, default=64)
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "cache")
    ap.add_argument("--backbones", nargs="*", default=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
    args = ap.parse_args()

    import jax

    from pipeline import images, resize
    from pipeline.models import registry

    paths = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.limit]
    print(f"{len(paths)} photos from {args.photos}; device: {jax.devices()[0].platform}")
    print(f"{'backbone':<20} {'median rel. drift':>17} {'worst':>8} {'min cosine':>11} "
          f"{'top-1 changed':>14} {'f32 img/s':>10} {'bf16 img/s':>11}")
    for name in args.backbones:
        spec = registry.get_spec(name)
        batch = np.stack([resize.resize_and_crop(images.decode_image(p), spec) for p in paths]).astype(np.float32)
        out = {}
        for dtype in ("float32", "bfloat16"):
            bb = registry.load_backbone(name, args.cache_dir, dtype=dtype)
            embed = jax.jit(bb.embed)
            feats = np.asarray(embed(bb.params, batch[:8]))  # compile
            t = time.perf_counter()
            feats = np.concatenate([np.asarray(embed(bb.params, batch[i:i + 8]))
                                    for i in range(0, len(batch), 8)]).astype(np.float32)
            rate = len(batch) / (time.perf_counter() - t)
            logits = np.asarray(jax.jit(bb.imagenet_logits)(bb.params, feats.astype(np.float32)))
            out[dtype] = (feats, logits.argmax(-1), rate)
        a, b = out["float32"][0], out["bfloat16"][0]
        rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        changed = float((out["float32"][1] != out["bfloat16"][1]).mean())
        print(f"{name:<20} {np.median(rel):>17.4f} {rel.max():>8.4f} {cos.min():>11.5f} "
              f"{changed:>13.1%} {out['float32'][2]:>10.1f} {out['bfloat16'][2]:>11.1f}")


if __name__ == "__main__":
    main()
