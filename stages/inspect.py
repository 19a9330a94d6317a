"""Stage `inspect`: look inside the network -- what it sees, where it looks, how it arranges photos.

1. Feature maps: for a few photos, the most active channels of chosen layers (`inspect.layers`,
   default an early, a middle and the last), beside the photo (`pipeline.inspect.featuremaps`).
2. Grad-CAM (`pipeline.inspect.gradcam`) of the trained head's predicted class and of the true
   class, for the most confident test mistakes and a correct example per class (capped), through
   the backbone cut at `inspect.gradcam_layer` + the trained head: one jitted, batched function.
3. A 2-D map of the cached test and train features (`pipeline.inspect.mapping`), class-coloured,
   mistakes crossed; ``map.json`` holds each point's position on ``map.png`` for the report's hover.

Outputs:
  featuremaps/<NN>_<layer>.png   photo | grid of the most active channels
  gradcam/<NN>.png               photo | CAM of the predicted class | CAM of the true class
  map.png, map.json              the 2-D map; per point id, split, true, predicted, p, position
  inspect.json                   layers (shape, channels shown), Grad-CAM records, map settings, times

map.json and inspect.json are one type, `pipeline.inspect.artifact.InspectOutput`, written and read
there; the params section is `pipeline.inspect.params.InspectParams`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.inspect.params import InspectParams
from pipeline.stage import Stage, StageContext


def _pick_head(heads_dir: Path, wanted: str) -> str:
    """The head to explain: the one named, else the one the report picks (best by CV or val accuracy)."""
    from pipeline.heads.trained import available
    from pipeline.heads.primary import choose_primary
    from pipeline.heads.artifact import read

    names = available(heads_dir)
    if not names:
        raise UserError(f"inspect: the heads stage saved no heads in {heads_dir}; Grad-CAM and the map need one.")
    if wanted != "auto":
        if wanted not in names:
            raise UserError(f"inspect.head: {wanted!r} is not a head of this run; choose auto or one of "
                            f"{', '.join(names)}.")
        return wanted
    choice = choose_primary(read(heads_dir), "auto")
    return choice if choice in names else names[0]


def _layers(p: InspectParams, names: list[str], backbone: str) -> tuple[list[str], str]:
    from pipeline.inspect import featuremaps as fm
    from pipeline.models import cut

    viewable = fm.viewable_layers(names)
    layers = [cut.check_layer(viewable, name, f"inspect.layers[{i}]", backbone) for i, name in enumerate(p.layers)]
    cam = viewable[-1] if p.gradcam_layer == "auto" else cut.check_layer(viewable, p.gradcam_layer,
                                                                          "inspect.gradcam_layer", backbone)
    return layers or fm.default_layers(names), cam


def probe_on_one_backbone(features_dir: Path, classes: list[str]):
    """A `TrainedHead`: the heads stage's linear probe (default params) on one features folder."""
    import jax.numpy as jnp

    from pipeline.heads import inputs, probe
    from pipeline.heads.logreg import linear_logits
    from pipeline.heads.params import HeadsParams
    from pipeline.heads.trained import TrainedHead, fold_standardization

    data = inputs.load_features(features_dir)
    if data["classes"] != list(classes):
        raise UserError(f"{features_dir}: its classes differ from the data stage's; rerun the features stage.")
    lr = probe.fit_logreg(HeadsParams(), data, len(classes))
    W, b = fold_standardization(lr["W"], lr["b"], lr["mean"], lr["scale"])
    return TrainedHead(name="logreg", kind="linear", classes=list(classes),
                       params={"W": jnp.asarray(W), "b": jnp.asarray(b)}, config={},
                       apply_fn=lambda prm, x: linear_logits(prm["W"], prm["b"], x))


def run(ctx: StageContext) -> dict[str, Any]:
    import numpy as np

    from pipeline.heads.trained import fused_backbones, load_head
    from pipeline.inspect import artifact, mapplot, steps
    from pipeline.models import cut, registry
    from pipeline.heads.artifact import read_predictions
    from pipeline.sources import load_data

    p: InspectParams = ctx.params["inspect"]
    bp = ctx.params["backbone"]
    out = Path(ctx.out_dir)
    data = load_data(ctx.inputs["data"])
    classes = data.classes
    heads_dir = Path(ctx.inputs["heads"])
    head_name = answer = _pick_head(heads_dir, p.head)   # answer: whose predictions and mistakes
    if fused_backbones(heads_dir, head_name):
        # Grad-CAM differentiates one backbone; a fused head also reads the others. Explain a
        # probe on the first backbone's features instead, and say so everywhere it shows.
        head = probe_on_one_backbone(Path(ctx.inputs["features"]), classes)
        ctx.log(f"inspect: head {head_name} reads fused features; Grad-CAM and the map use a linear probe "
                f"on {bp.primary}'s features alone (the heads protocol, default heads params)")
        head_name = f"logreg on {bp.primary} alone"
    else:
        head = load_head(heads_dir, head_name, backbone=bp.primary)
    backbone = registry.load_backbone(bp.primary, ctx.cache_dir, bp.dtype, bp.depthwise)
    layers, cam_layer = _layers(p, cut.layer_names(backbone.spec), bp.primary)
    times: dict[str, float] = {}

    # Every photo either part needs, decoded once.
    photos = steps.choose_photos(data, p.photos)
    preds = read_predictions(heads_dir, answer) or []
    examples = steps.pick_examples(preds, p.max_mistakes, p.max_correct)
    test = "test" if "test" in data.splits else next(iter(data.splits))
    t0 = time.perf_counter()
    pixels = steps.load_photos(data, [(s, i) for s, i, _ in photos] + [(test, r.id) for _, r in examples],
                               backbone.spec)
    times["decode"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    fmaps = steps.feature_maps(backbone, layers, photos, pixels, p.channels, out, p.batch_size,
                               cache_dir=ctx.cache_dir)
    times["feature_maps"] = time.perf_counter() - t0
    ctx.log(f"feature maps: {len(photos)} photo(s) x {len(layers)} layer(s) ({', '.join(layers)})")

    t0 = time.perf_counter()
    cams = steps.gradcam_examples(backbone, head, cam_layer, examples, pixels, classes, out, p.batch_size)
    times["gradcam"] = time.perf_counter() - t0
    ctx.log(f"Grad-CAM at {cam_layer} of head {head_name}: {len(cams)} example(s), {times['gradcam']:.1f}s")

    t0 = time.perf_counter()
    pts = steps.map_points(Path(ctx.inputs["features"]), p.map_splits, head, p.map_max_points, p.seed)
    xy = _embed_2d(ctx.cache_dir, pts["features"], p.map_method, p.seed)
    times["map"] = time.perf_counter() - t0
    is_test = np.array([s == "test" for s in pts["split"]])
    wrong = pts["pred"] != pts["labels"]
    png, pos = mapplot.map_png(xy, pts["labels"], classes, is_test, wrong,
                               f"{p.map_method} map of {bp.primary} features ({', '.join(p.map_splits)}), "
                               f"head {head_name}")
    (out / "map.png").write_bytes(png)
    ctx.log(f"map: {len(xy)} points by {p.map_method} in {times['map']:.1f}s")

    points = artifact.PointMapData(
        method=p.map_method, seed=p.seed, classes=list(classes), head=head_name, ids=list(pts["ids"]),
        split=list(pts["split"]), true=pts["labels"].tolist(), pred=pts["pred"].tolist(),
        p=[round(float(v), 4) for v in pts["p"]], xy=np.round(xy, 5).tolist(), pos=np.round(pos, 5).tolist())
    artifact.write(out, artifact.InspectOutput(
        backbone=bp.primary, head=head_name, layers=list(layers), gradcam_layer=cam_layer,
        feature_maps=[artifact.FeatureMapRecord(**r) for r in fmaps],
        gradcam=[artifact.GradcamRecord(**r) for r in cams],
        map=artifact.MapSummary(method=p.map_method, points=len(xy), splits=list(p.map_splits),
                                mistakes=int(wrong.sum()), image="map.png"),
        seconds={k: round(v, 3) for k, v in times.items()}, points=points))
    return {"photos": len(photos), "layers": len(layers), "gradcam": len(cams), "map_points": len(xy)}


def _embed_2d(cache_dir: Any, features: Any, method: str, seed: int) -> Any:
    """The map's layout: it reads the features, the method and the seed, never the head, so it is
    remembered (`pipeline.gradients.memo`) and a head change only recolours the points."""
    from pipeline.gradients import memo
    from pipeline.inspect import mapping

    k = memo.key({"stage": "inspect.map", "features": memo.tree_digest(features), "method": method, "seed": seed})
    found = memo.load(cache_dir, "inspect.map", k)
    if found is not None and found["xy"].shape == (len(features), 2):
        return found["xy"]
    xy = mapping.embed_2d(features, method, seed)
    memo.save(cache_dir, "inspect.map", k, {"xy": xy})
    return xy


STAGE = Stage(
    name="inspect",
    run=run,
    deps=("data", "features", "heads"),
    sections=("backbone", "inspect"),
    version="2",
    schemas={"inspect": InspectParams},
    all_processes=False,
    description="feature maps, Grad-CAM of the trained head, a 2-D map of the cached features",
)
