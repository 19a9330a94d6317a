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
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any, Literal, Union

from pipeline.errors import UserError
from pipeline.params import ParamsError, spec
from pipeline.stage import Stage, StageContext


@dataclasses.dataclass(frozen=True)
class InspectParams:
    """params.yaml section ``inspect``."""

    photos: Union[int, str, tuple[str, ...]] = spec(
        4, help="photos for the feature maps: a count (that many test photos, one class after another), "
                "'one_per_class' (first test photo of every class), or a list of image ids")
    layers: tuple[str, ...] = spec((), help="layers whose output maps are shown (names from the backbone's layer "
                                             "list; empty: an early, a middle and the last)")
    channels: int = spec(16, min=1, max=64, help="most active channels shown per layer and photo")
    gradcam_layer: str = spec("auto", help="layer whose output Grad-CAM weighs ('auto': the last map, the "
                                           "usual choice)")
    head: str = spec("auto", help="trained head explained by Grad-CAM and the map: logreg, mlp, or 'auto' "
                                  "(the best by CV or val accuracy, as the report picks)")
    max_mistakes: int = spec(8, min=0, max=200, help="most confident test mistakes explained by Grad-CAM")
    max_correct: int = spec(12, min=0, max=200, help="correct test examples explained (one per class, at most this)")
    map_method: Literal["opentsne", "tsne", "umap"] = spec(
        "opentsne", help="2-D map: opentsne (FFT t-SNE), tsne (scikit-learn) or umap (umap-learn)")
    map_splits: tuple[str, ...] = spec(("test", "train"), min_len=1, help="splits of cached features on the map")
    map_max_points: int = spec(20000, min=10, help="at most this many points (a seeded sample beyond it)")
    seed: int = spec(0, help="seed of the map layout and the point sample")
    batch_size: int = spec(8, min=1, max=256, help="photos per Grad-CAM / feature-map call",
                           affects_output=False)

    def validate(self) -> None:
        if isinstance(self.photos, int) and self.photos < 1:
            raise ParamsError(f"photos: {self.photos} must be at least 1 (or 'one_per_class', or a list of ids).")
        if isinstance(self.photos, str) and self.photos != "one_per_class":
            raise ParamsError(f"photos: {self.photos!r} is not allowed; give a count, 'one_per_class' or a list "
                              "of image ids.")
        if isinstance(self.photos, tuple) and not self.photos:
            raise ParamsError("photos: the list of ids is empty; give at least one id or a count.")
        if not re.fullmatch(r"[A-Za-z0-9_]+", self.head):
            raise ParamsError(f"head: {self.head!r} is not a head name; use auto, logreg or mlp.")
        for i, s in enumerate(self.map_splits):
            if s not in ("train", "val", "test"):
                raise ParamsError(f"map_splits[{i}]: {s!r} is not a split; use train, val or test.")


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
    from pipeline.inspect import mapplot, steps
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
    preds = read_predictions(heads_dir, answer, classes) or []
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
    (out / "map.json").write_text(json.dumps({
        "method": p.map_method, "seed": p.seed, "classes": classes, "head": head_name,
        "ids": pts["ids"], "split": pts["split"], "true": pts["labels"].tolist(), "pred": pts["pred"].tolist(),
        "p": [round(float(v), 4) for v in pts["p"]], "xy": np.round(xy, 5).tolist(),
        "pos": np.round(pos, 5).tolist()}))
    ctx.log(f"map: {len(xy)} points by {p.map_method} in {times['map']:.1f}s")

    doc = {"backbone": bp.primary, "head": head_name, "layers": layers, "gradcam_layer": cam_layer,
           "feature_maps": fmaps, "gradcam": cams,
           "map": {"method": p.map_method, "points": len(xy), "splits": list(p.map_splits),
                   "mistakes": int(wrong.sum()), "image": "map.png"},
           "seconds": {k: round(v, 3) for k, v in times.items()}}
    (out / "inspect.json").write_text(json.dumps(doc, indent=1))
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
    version="1",
    schemas={"inspect": InspectParams},
    all_processes=False,
    description="feature maps, Grad-CAM of the trained head, a 2-D map of the cached features",
)
