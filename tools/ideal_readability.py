"""Judge ideal-image recipes the way issue 15 asks: cross-backbone top-1 and saturated pixels.

For 10 ImageNet targets, each recipe optimises one image per target on efficientnet_lite0 (all
targets in one batch, `pipeline.gradients.ideal.optimize`), then reports

  p(lite0)     target probability on the network it was made for (the saved uint8 image)
  lite1/lite2  top-1 hits of the target by efficientnet_lite1 / _lite2's ImageNet heads: an image
               another network also reads as the class is one that looks like it
  saturated    share of channel values at 0 or 255 in the saved image; near-saturated: <= 5 or
               >= 250 (a sigmoid-rendered image rarely rounds to 255 exactly, yet looks blown out)
  seconds      wall time of the optimisation

and writes one grid PNG per recipe (columns = targets) to --out, for looking at them.

Run: python tools/ideal_readability.py --out DIR [--recipes main,logit,...] [--cache-dir cache]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGETS = ("tabby", "zebra", "goldfish", "golden retriever", "monarch", "flamingo", "pineapple", "daisy",
           "jellyfish", "school bus")

# The stage's main recipe before issue 15 (probability objective, no pull to grey), then what
# feature-visualisation work changes: the class logit, a pull to grey against blow-out (logit_l2_30
# is today's main recipe), longer runs and stronger robustness transforms.
BASE = dict(steps=160, lr=0.25, optimizer="adam", param="fourier", decay=1.5, tv_weight=0.5, l2_weight=0.0,
            jitter=8.0, scale=0.1, rotate=10.0, polish=16, objective="prob", seed=0)
RECIPES = {
    "prob": {},
    "logit": {"objective": "logit"},
    "logit_512": {"objective": "logit", "steps": 512, "polish": 51},
    "logit_512_strong": {"objective": "logit", "steps": 512, "polish": 51, "jitter": 16.0, "scale": 0.2,
                         "rotate": 20.0},
    "logit_l2_10": {"objective": "logit", "l2_weight": 10.0},
    "logit_l2_30": {"objective": "logit", "l2_weight": 30.0},
    "logit_512_strong_l2": {"objective": "logit", "steps": 512, "polish": 51, "jitter": 16.0, "scale": 0.2,
                            "rotate": 20.0, "l2_weight": 30.0},
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--cache-dir", default=str(Path(__file__).resolve().parents[1] / "cache"))
    ap.add_argument("--set", action="append", default=[], help="override for every recipe: key=value (JSON value)")
    a = ap.parse_args(argv)
    import numpy as np

    from pipeline.gradients import attacks, pictures
    from pipeline.gradients import ideal as ideal_lib
    from pipeline.gradients import model as model_lib
    from pipeline.gradients import targets as targets_lib
    from pipeline.models import registry

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    bb = registry.load_backbone("efficientnet_lite0", a.cache_dir)
    model = model_lib.imagenet_model(bb)
    ids = [targets_lib.resolve(t, "imagenet", {}, f"targets[{i}]").indices[0] for i, t in enumerate(TARGETS)]
    masks = model_lib.class_mask([[i] for i in ids], len(model.classes))
    judges = {n: registry.load_backbone(n, a.cache_dir) for n in ("efficientnet_lite1", "efficientnet_lite2")}
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
    rows = []
    for name in a.recipes.split(","):
        settings = ideal_lib.IdealSettings(**{**BASE, **RECIPES[name], **extra})
        t0 = time.perf_counter()
        res = ideal_lib.optimize(model, masks, settings)
        secs = time.perf_counter() - t0
        row = {"recipe": name, "p_lite0": float(np.exp(res.log_prob).mean()), "seconds": round(secs, 1),
               "saturated": float(np.mean((res.images == 0) | (res.images == 255))),
               "near_saturated": float(np.mean((res.images <= 5) | (res.images >= 250)))}
        for jn, jb in judges.items():
            jm = model_lib.imagenet_model(jb)
            logits = attacks.predict_logits(jm, pictures.resize_batch(res.images, jb.spec), batch_size=len(ids))
            row[jn] = int(sum(int(np.argmax(logits[t])) == ids[t] for t in range(len(ids))))
            row[f"{jn}_top1"] = [jm.classes[int(np.argmax(logits[t]))] for t in range(len(ids))]
        rows.append(row)
        for t, target in enumerate(TARGETS):
            pictures.save_png(out / name / f"{t:02d}_{target.replace(' ', '_')}.png", res.images[t])
        pictures.save_png(out / f"{name}.png", pictures.grid([list(res.images)], row_labels=[name],
                                                             col_labels=list(TARGETS)))
        print(f"{name}: p {row['p_lite0']:.3f} lite1 {row['efficientnet_lite1']}/10 lite2 "
              f"{row['efficientnet_lite2']}/10 saturated {row['saturated']:.3f} near {row['near_saturated']:.3f} ({secs:.0f} s, "
              f"load {os.getloadavg()[0]:.1f})", flush=True)
        (out / "results.json").write_text(json.dumps(rows, indent=1))
    print("\n| recipe | p(lite0) | lite1 top-1 | lite2 top-1 | saturated | near-saturated | s |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['recipe']} | {r['p_lite0']:.3f} | {r['efficientnet_lite1']}/10 | {r['efficientnet_lite2']}/10 | "
              f"{100 * r['saturated']:.1f}% | {100 * r['near_saturated']:.1f}% | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
