"""Calibrate the doctor's near-duplicate threshold on real photos and their re-encoded copies.

Every photo of ../shared/data (pets-dev, pets-tune, cats-dogs-dev) gets one copy made by one of
`pipeline.doctor.planted.EDITS` (round robin: JPEG re-compression, resized PNG, small crops, all
at once). Both are embedded with the real backbone; the script prints the distribution of the
cosine similarity (raw and mean-centred features) and of the thumbnail correlation for

  - copy pairs (an original and its copy): what must be found;
  - distinct photos of the same class (breed): what must not;
  - each original's most similar distinct photo of any class;

and the margin between them at the chosen threshold.

    python tools/calibrate_doctor.py [--backbone efficientnet_lite0] [--features /tmp/cal.npz]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.doctor import neighbors, pixels, planted  # noqa: E402
from pipeline.sources import IMAGE_SUFFIXES  # noqa: E402

SETS = ("pets-dev", "pets-tune", "cats-dogs-dev")
QUANTILES = (0.0, 0.01, 0.05, 0.5, 0.95, 0.99, 1.0)


def photos(data: Path) -> list[tuple[str, str, Path]]:
    """(set, class, path) of every photo, sorted."""
    out = []
    for s in SETS:
        for p in sorted((data / s).rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                out.append((s, f"{s}:{p.parent.name}", p))
    return out


def table(rows: dict[str, np.ndarray]) -> str:
    head = f"{'':38s}" + "".join(f"{'q' + format(q, 'g'):>8s}" for q in QUANTILES) + f"{'n':>8s}"
    lines = [head]
    for name, v in rows.items():
        qs = np.quantile(v, QUANTILES) if len(v) else [np.nan] * len(QUANTILES)
        lines.append(f"{name:38s}" + "".join(f"{q:8.4f}" for q in qs) + f"{len(v):8d}")
    return "\n".join(lines)


def pair_table(copy_sim, kinds, edits, same_pairs, nearest, variant):
    rows = {f"[{variant}] copy pairs (all edits)": copy_sim}
    for k in edits:
        rows[f"[{variant}]   copy: {k}"] = copy_sim[kinds == k]
    rows[f"[{variant}] distinct, same class"] = same_pairs
    rows[f"[{variant}] distinct, nearest of any class"] = nearest
    return table(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "cache")
    ap.add_argument("--features", type=Path, default=None, help="npz to reuse / save the embeddings")
    ap.add_argument("--threshold", type=float, default=0.8, help="cosine threshold to evaluate")
    ap.add_argument("--pixel-threshold", type=float, default=0.95, help="thumbnail correlation threshold to evaluate")
    ap.add_argument("--variant", choices=("raw", "centred"), default="raw", help="features the threshold applies to")
    ap.add_argument("--pixel-size", type=int, default=pixels.SIDE)
    args = ap.parse_args()

    items = photos(args.data)
    edits = list(planted.EDITS)
    originals = [p.read_bytes() for _, _, p in items]
    kinds = np.array([edits[i % len(edits)] for i in range(len(items))])
    copies = [planted.apply(k, b)[0] for k, b in zip(kinds, originals)]
    if args.features and args.features.exists():
        x = np.load(args.features)["x"]
    else:
        x = planted.embed(originals + copies, args.backbone, args.cache_dir)
        if args.features:
            np.savez(args.features, x=x)
    n = len(items)
    classes = np.array([c for _, c, _ in items])
    print(f"{n} photos ({', '.join(SETS)}), {n} copies ({len(edits)} edits, round robin), "
          f"backbone {args.backbone}, features {x.shape}")
    iu = np.triu_indices(n, 1)
    same = (classes[:, None] == classes[None, :])[iu]
    sims = {}
    for variant, center in (("raw", None), ("centred", x[:n].mean(0))):
        z = neighbors.normalize(x, center)
        copy_sim = np.einsum("nd,nd->n", z[:n], z[n:])
        s = z[:n] @ z[:n].T
        same_pairs = s[iu][same]
        np.fill_diagonal(s, -np.inf)
        print("\ncosine similarity\n" + pair_table(copy_sim, kinds, edits, same_pairs, s.max(1), variant))
        hi = same_pairs.max()
        small = np.isin(kinds, planted.SMALL_EDITS)
        print(f"[{variant}] highest distinct same-class pair {hi:.4f}; copies above it: "
              f"{(copy_sim[small] > hi).mean():.3f} of small edits, {(copy_sim > hi).mean():.3f} of all")
        sims[variant] = (s, copy_sim)

    # The thumbnail check on what the feature threshold lets through.
    thumbs = [pixels.thumbnail(b, 4 * args.pixel_size) for b in originals + copies]
    corr_copy = np.array([pixels.correlation(thumbs[i], thumbs[n + i], args.pixel_size) for i in range(n)])
    sc, cs = sims[args.variant]
    # Distinct pairs near the threshold in either variant.
    lowest = min(0.6, args.threshold - 0.15)
    near = np.triu((sims["raw"][0] >= lowest) | (sims["centred"][0] >= lowest), 1)
    a, b = np.nonzero(near)
    corr_dist = np.array([pixels.correlation(thumbs[i], thumbs[j], args.pixel_size) for i, j in zip(a, b)])
    dsim = sc[a, b]
    dsame = classes[a] == classes[b]
    print(f"\nthumbnail correlation ({args.pixel_size}x{args.pixel_size} grey, best window)\n" + table({
        "copy pairs": corr_copy, **{f"  copy: {k}": corr_copy[kinds == k] for k in edits},
        f"distinct pairs, cosine >= {lowest:.2f}": corr_dist,
        f"distinct pairs, cosine >= {args.threshold:.2f}": corr_dist[dsim >= args.threshold]}))
    top = np.argsort(-corr_dist)[:6]
    for t in top:
        print(f"   distinct pair corr {corr_dist[t]:.3f} cosine {dsim[t]:.3f}: "
              f"{items[a[t]][2].relative_to(args.data)}  {items[b[t]][2].relative_to(args.data)}")

    P = args.pixel_threshold
    small = np.isin(kinds, planted.SMALL_EDITS)
    print(f"\nrecall of copies and false pairs by cosine threshold ({args.variant}), thumbnail correlation >= {P}")
    head = f"{'cosine':>7s}" + "".join(f"{k[:13]:>14s}" for k in edits) + f"{'small edits':>12s}{'candidates':>11s}{'false':>6s}"
    print(head)
    for T in sorted({0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, args.threshold}):
        found = (cs >= T) & (corr_copy >= P)
        cand = dsim >= T
        false = cand & (corr_dist >= P)
        print(f"{T:7.2f}" + "".join(f"{found[kinds == k].mean():14.3f}" for k in edits)
              + f"{found[small].mean():12.4f}{cand.sum():11d}{false.sum():6d}")
    T = args.threshold
    found = (cs >= T) & (corr_copy >= P)
    print(f"\nchosen: cosine >= {T} ({args.variant}), thumbnail correlation >= {P}: small edits recall "
          f"{found[small].mean():.4f} ({found[small].sum()}/{small.sum()}); feature candidates among "
          f"distinct pairs {(dsim >= T).sum()} of {len(iu[0])}, passing the pixel check "
          f"{((dsim >= T) & (corr_dist >= P)).sum()}")
    print(f"margins: pixel, lowest small-edit copy {corr_copy[small].min():.4f} vs highest distinct pair "
          f"(cosine >= {lowest:.2f}) {corr_dist.max():.4f}; cosine, highest distinct "
          f"same-class pair {sc[np.triu_indices(n, 1)][same].max():.4f}")


if __name__ == "__main__":
    main()
