"""Write the embedded demo sample (`pipeline/sample/pets/`) from the real pets-dev photos.

    python tools/make_sample.py [--src ../shared/data/pets-dev] [--out pipeline/sample/pets]

Every photo is EXIF-rotated, converted to RGB, downscaled so its longer side is at most 320 px
(Lanczos) and saved as a baseline JPEG at quality 88 without metadata: 111 photos, ~3 MB. The
licence (CC BY-SA 4.0) and attribution go beside them in pipeline/sample/LICENSE.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image, ImageOps

LONGER_SIDE = 320
QUALITY = 88


def shrink(src: Path, dst: Path) -> None:
    """One photo: EXIF rotation applied, RGB, longer side <= LONGER_SIDE, JPEG at QUALITY."""
    with Image.open(src) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        im.thumbnail((LONGER_SIDE, LONGER_SIDE), Image.Resampling.LANCZOS)
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.save(dst, "JPEG", quality=QUALITY, optimize=True)


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=root.parent / "shared" / "data" / "pets-dev")
    ap.add_argument("--out", type=Path, default=root / "pipeline" / "sample" / "pets")
    args = ap.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    n = total = 0
    for src in sorted(args.src.glob("*/*")):
        if src.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        dst = args.out / src.parent.name / (src.stem + ".jpg")
        shrink(src, dst)
        n += 1
        total += dst.stat().st_size
    print(f"wrote {n} photos, {total / 1e6:.2f} MB, to {args.out}")


if __name__ == "__main__":
    main()
