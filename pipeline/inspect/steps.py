"""The inspect stage's three computations, as functions of loaded inputs (tests call them directly)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.errors import UserError
from pipeline.heads.artifact import PredictionRow


# --- photos --------------------------------------------------------------------------------------

def choose_photos(data: Any, photos: int | str | Sequence[str], key: str = "inspect.photos") -> list[tuple[str, str, int]]:
    """(split, id, label) of the photos whose feature maps are drawn.

    Args:
      data: a `pipeline.sources.DataSet`.
      photos: a count (test photos, one class after another), ``one_per_class``, or image ids.
    """
    split = "test" if "test" in data.splits else next(iter(data.splits))
    rec = data.splits[split]
    if isinstance(photos, (list, tuple)):
        where = {i: (s, lab) for s, r in data.splits.items() for i, lab in zip(r.ids, r.labels)}
        out = []
        for n, pid in enumerate(photos):
            if pid not in where:
                near = difflib.get_close_matches(str(pid), list(where), n=3)
                hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
                raise UserError(f"{key}[{n}]: no image {pid!r} in the data stage's splits.{hint} "
                                f"Ids look like {rec.ids[0]!r} (see the data stage's splits.json).")
            out.append((where[pid][0], pid, where[pid][1]))
        return out
    by_class: dict[int, list[str]] = {}
    for i, lab in zip(rec.ids, rec.labels):
        by_class.setdefault(lab, []).append(i)
    order = sorted(by_class)
    if photos == "one_per_class":
        return [(split, by_class[c][0], c) for c in order]
    out, depth = [], 0
    while len(out) < int(photos) and any(depth < len(v) for v in by_class.values()):
        out += [(split, by_class[c][depth], c) for c in order if depth < len(by_class[c])]
        depth += 1
    return out[:int(photos)]


def load_photos(data: Any, wanted: Sequence[tuple[str, str]], spec: Any) -> dict[str, np.ndarray]:
    """Decode, resize and centre-crop the photos `wanted` ((split, id) pairs): id -> (S, S, 3) uint8."""
    from pipeline import images as images_lib, resize

    by_split: dict[str, set[str]] = {}
    for s, i in wanted:
        by_split.setdefault(s, set()).add(i)
    out: dict[str, np.ndarray] = {}
    for s, ids in by_split.items():
        rec = data.splits[s]
        positions = sorted(rec.ids.index(i) for i in ids)
        # Read only the span that holds the wanted photos (tfds records are read in order).
        for pos, src in zip(range(positions[0], positions[-1] + 1), data.sources(s, positions[0], positions[-1] + 1)):
            if rec.ids[pos] in ids:
                pil = images_lib.decode_image(src, name=str(rec.ids[pos]))
                out[rec.ids[pos]] = resize.resize_and_crop(pil, spec)
    return out


# --- feature maps --------------------------------------------------------------------------------

def feature_maps(backbone: Any, layers: Sequence[str], photos: Sequence[tuple[str, str, int]],
                 pixels: dict[str, np.ndarray], channels: int, out: Path, batch_size: int = 8,
                 cache_dir: Any = None) -> list[dict]:
    """Write ``featuremaps/<NN>_<layer>.png`` per photo and layer; return one record per image.

    With `cache_dir`, the panels are remembered (`pipeline.gradients.memo`, name
    ``inspect.featuremaps``) under a key of what they read -- the backbone's weights, the layers,
    the photos' pixels, `channels` -- never the head: a head change redraws none of them.
    """
    import json as json_lib

    from pipeline.gradients import memo, pictures

    k = None
    if cache_dir is not None:
        k = memo.key({"stage": "inspect.featuremaps", "backbone": [backbone.spec.name, backbone.dtype],
                      "weights": memo.tree_digest(backbone.params), "layers": list(layers),
                      "photos": [[s, str(i), int(lab)] for s, i, lab in photos], "channels": channels,
                      "pixels": memo.tree_digest([pixels[pid] for _, pid, _ in photos])})
        found = memo.load(cache_dir, "inspect.featuremaps", k)
        if found is not None:
            try:
                records = json_lib.loads(str(found["records"]))
                for n, r in enumerate(records):
                    pictures.save_png(out / r["image"], found[f"panel_{n}"])
                return records
            except (KeyError, ValueError):
                pass  # a memo from another layout: draw again
    records, panels = _feature_maps(backbone, layers, photos, pixels, channels, batch_size)
    for r, panel in zip(records, panels):
        pictures.save_png(out / r["image"], panel)
    if k is not None:
        memo.save(cache_dir, "inspect.featuremaps", k, {"records": np.array(json_lib.dumps(records)),
                                                          **{f"panel_{n}": q for n, q in enumerate(panels)}})
    return records


def _feature_maps(backbone: Any, layers: Sequence[str], photos: Sequence[tuple[str, str, int]],
                  pixels: dict[str, np.ndarray], channels: int, batch_size: int) -> tuple[list[dict], list[np.ndarray]]:
    """(records, panel images) of `feature_maps`, nothing written."""
    from pipeline.inspect import featuremaps as fm
    from pipeline.models import cut

    names = cut.layer_names(backbone.spec)
    cuts = [cut.split(backbone, fm.cut_after(names, layer)) for layer in layers]
    x = np.stack([pixels[pid] for _, pid, _ in photos]).astype(np.float32)
    acts: list[list[np.ndarray]] = [[] for _ in layers]
    for i in range(0, len(x), batch_size):
        for j, a in enumerate(fm.activations(cuts, backbone.params, x[i:i + batch_size])):
            acts[j].append(a)
    records, panels = [], []
    for j, layer in enumerate(layers):
        a = np.concatenate(acts[j])  # (N, h, w, C)
        for n, (split, pid, label) in enumerate(photos):
            top = fm.top_channels(a[n], channels)
            file = f"featuremaps/{n:02d}_{layer}.png"
            panels.append(fm.beside(pixels[pid], fm.channel_grid(a[n], top)))
            records.append({"photo": n, "id": pid, "split": split, "label": label, "layer": layer,
                            "shape": list(a.shape[1:]), "channels": [int(c) for c in top],
                            "mean_activation": [round(float(a[n, ..., c].mean()), 5) for c in top],
                            "image": file})
    return records, panels


# --- Grad-CAM ------------------------------------------------------------------------------------

def gradcam_model(backbone: Any, head: Any, layer: str) -> tuple[Any, Any, Any, Any]:
    """(trunk, top, params, cut) for Grad-CAM of `head` at `layer`'s output.

    ``top(params, a) = head.logits(cut.top(a))``: the rest of the same backbone `embed` runs, then
    the trained head -- the composition `pipeline.gradients.model.head_model` differentiates.
    """
    from pipeline.inspect import featuremaps as fm
    from pipeline.models import cut

    c = cut.split(backbone, fm.cut_after(cut.layer_names(backbone.spec), layer))
    top_fn = c.top_fn

    def trunk(params, pixels):
        return c.trunk(params[0], pixels)

    def top(params, a):
        return head.logits(params[1], top_fn(params[0], a))

    return trunk, top, (backbone.params, head.params), c


def pick_examples(preds: Sequence[PredictionRow], max_mistakes: int, max_correct: int
                  ) -> list[tuple[str, PredictionRow]]:
    """(kind, row): the most confident mistakes, then the surest correct example of each class, in
    class order (capped); kind is ``mistake`` or ``correct``."""
    wrong = sorted((r for r in preds if r.true != r.pred), key=lambda r: -r.p_pred)[:max_mistakes]
    best: dict[int, PredictionRow] = {}
    for r in preds:
        if r.true == r.pred and (r.true not in best or r.p_pred > best[r.true].p_pred):
            best[r.true] = r
    right = [best[c] for c in sorted(best)][:max_correct]
    return [("mistake", r) for r in wrong] + [("correct", r) for r in right]


def gradcam_examples(backbone: Any, head: Any, layer: str, examples: Sequence[tuple[str, PredictionRow]],
                     pixels: dict[str, np.ndarray], classes: Sequence[str], out: Path, batch_size: int = 8
                     ) -> list[dict]:
    """Grad-CAM of the predicted and the true class per example (`pick_examples`); writes ``gradcam/<NN>.png``."""
    from pipeline.gradients import pictures
    from pipeline.inspect import gradcam as gc

    if not examples:
        return []
    trunk, top, params, _ = gradcam_model(backbone, head, layer)
    x = np.stack([pixels[r.id] for _, r in examples]).astype(np.float32)
    cls = np.array([[r.pred, r.true] for _, r in examples], np.int32)
    # A 2-class head scores one decision: centred logits give both classes a map (gradcam docstring).
    cams, logits = gc.gradcam(trunk, top, params, x, cls, batch_size=batch_size, centre=len(classes) == 2)
    up = gc.upsample(cams, x.shape[1])  # (N, 2, S, S)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    records = []
    for n, (kind, r) in enumerate(examples):
        photo = pixels[r.id]
        panels = [photo, gc.overlay(photo, up[n, 0])]
        if kind == "mistake":
            panels.append(gc.overlay(photo, up[n, 1]))
        file = f"gradcam/{n:02d}.png"
        pictures.save_png(out / file, np.concatenate([np.pad(q, ((0, 0), (0, 4), (0, 0)), constant_values=255)
                                                      for q in panels], axis=1)[:, :-4])
        true, pred = classes[r.true], classes[r.pred]
        records.append({"id": r.id, "kind": kind, "true": true, "pred": pred, "p_pred": r.p_pred, "p_true": r.p_true,
                        "p_pred_here": round(float(p[n, cls[n, 0]]), 5), "image": file,
                        "panels": ["photo", f"CAM of {pred}"] + ([f"CAM of {true}"] if kind == "mistake" else []),
                        "cam_shape": list(cams.shape[2:])})
    return records


# --- the 2-D map ---------------------------------------------------------------------------------

def map_points(features_dir: Path, splits: Sequence[str], head: Any, max_points: int, seed: int
               ) -> dict[str, Any]:
    """Cached features of `splits` with the head's prediction for each (sampled to `max_points`)."""
    import jax
    import jax.numpy as jnp

    from pipeline.features.artifact import load_split, split_assembled

    feats, labels, ids, split_of = [], [], [], []
    for s in splits:
        if not split_assembled(features_dir, s):
            continue
        f, y, i = load_split(features_dir, s)
        feats.append(np.asarray(f, np.float32))
        labels.append(y)
        ids += i
        split_of += [s] * len(f)
    if not feats:
        raise UserError(f"inspect.map_splits: none of {', '.join(splits)} has cached features in {features_dir}.")
    x, y = np.concatenate(feats), np.concatenate(labels).astype(np.int64)
    keep = np.arange(len(x))
    if len(x) > max_points:  # a seeded sample, kept in the original order
        keep = np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))
    x, y = x[keep], y[keep]
    logits = np.concatenate([np.asarray(jax.jit(head.logits)(head.params, jnp.asarray(x[i:i + 4096])))
                             for i in range(0, len(x), 4096)])
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    pred = p.argmax(axis=1)
    return {"features": x, "labels": y, "pred": pred, "p": p[np.arange(len(x)), pred],
            "ids": [ids[i] for i in keep], "split": [split_of[i] for i in keep]}
