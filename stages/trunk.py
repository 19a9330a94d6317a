"""Stage `trunk`: run the frozen part of the backbone once; cache its activations at the cut.

The backbone is cut at ``finetune.unfreeze`` (`pipeline.models.cut`): everything before that layer
is the frozen trunk, run here once over every image; the layers from it on are what the `finetune`
stage trains, on these cached activations. Every image gets its centre view (the backbone's own
preprocessing); training images also get ``finetune.views`` augmented views, decoded from the
original photo each (`pipeline.finetune.views`; seeded by image index, so a resumed pass is
bit-identical). The key is the backbone and the ``finetune`` section (cut, views, augmentation,
storage dtype); the optimiser's settings live in ``finetune_train``, so changing a learning rate
reruns only the training stage.

Shards, resume and the multi-process split are the features stage's (`pipeline.shards`,
`pipeline.featurize.BatchEmbedder` over a trunk-shaped backbone): a killed pass resumes from its
last finished shard. With ``finetune.enabled: false`` the stage writes only ``info.json``.

Outputs (the contract with `finetune`): `pipeline.finetune.artifact` (`TrunkInfo`, `load_split`).
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import shards
from pipeline.finetune import artifact
from pipeline.finetune.artifact import TrunkInfo, write_trunk_info
from pipeline.finetune.params import FinetuneParams, rows_per_image
from pipeline.params import ParamsError
from pipeline.sources import SPLITS, load_data
from pipeline.stage import Stage, StageContext


@dataclasses.dataclass(frozen=True)
class _TrunkAsBackbone:
    """What `BatchEmbedder` needs of a backbone, with the cut's trunk as ``embed`` (flat rows)."""

    spec: Any
    params: Any
    trunk: Any

    def embed(self, params: Any, pixels: Any) -> Any:
        return self.trunk(params, pixels).reshape(pixels.shape[0], -1)  # (B, h*w*c)


def check_cut(backbone_name: str, unfreeze: str) -> list[str]:
    """The backbone's layer names, after checking ``finetune.unfreeze`` is one of them (imports jax)."""
    from pipeline.errors import UserError
    from pipeline.models import cut, registry

    names = cut.layer_names(registry.get_spec(backbone_name))
    try:
        cut.check_layer(names, unfreeze, "finetune.unfreeze", backbone_name)
    except UserError as e:
        raise ParamsError(str(e)) from None
    return names


def run(ctx: StageContext) -> dict[str, Any]:
    """Load the backbone and compute this process's activation shards (see `extract`)."""
    fp: FinetuneParams = ctx.params["finetune"]
    bp = ctx.params["backbone"]
    if not fp.enabled:
        ctx.log("finetune.enabled is false: nothing to cache (set it true to fine-tune)")
        return {"enabled": False}
    check_cut(bp.primary, fp.unfreeze)
    from pipeline.models import registry

    return extract(ctx, registry.load_backbone(bp.primary, ctx.cache_dir, dtype=bp.dtype, depthwise=bp.depthwise))


def extract(ctx: StageContext, backbone: Any) -> dict[str, Any]:
    """Compute and checkpoint this process's shards (centre + augmented views), skipping finished ones.

    Args:
      ctx: the stage context (``finetune`` params, ``inputs["data"]``, ``out_dir``).
      backbone: a loaded `registry.Backbone` whose module can be cut (`pipeline.models.cut`).

    Returns:
      This process's counts and timings (also written to ``stats/p<index>.json`` for `finalize`).
    """
    from pipeline.featurize import BatchEmbedder, decoded_views, default_workers
    from pipeline.finetune.views import ViewPlan, image_views
    from pipeline.models import cut

    fp: FinetuneParams = ctx.params["finetune"]
    out = Path(ctx.out_dir)
    c = cut.split(backbone, fp.unfreeze)
    flat = int(np.prod(c.activation_shape))
    shim = _TrunkAsBackbone(dataclasses.replace(backbone.spec, feature_dim=flat), backbone.params, c.trunk)
    embedder = BatchEmbedder(shim, fp.batch_size, 1, "rows", fp.dtype)
    data = load_data(ctx.inputs["data"])
    workers = fp.workers or default_workers()
    stats = {"backbone": backbone.spec.name, "cut": fp.unfreeze, "activation_shape": list(c.activation_shape),
             "computed_rows": 0, "resumed_shards": 0, "seconds": 0.0}
    for split in SPLITS:
        rec = data.splits[split]
        r = rows_per_image(fp, split)
        plan = ViewPlan(views=r - 1, flip=fp.flip, crop=fp.crop, min_scale=fp.min_scale,
                        color_jitter=fp.color_jitter, seed=fp.seed)
        folder = out / split / "shards"
        folder.mkdir(parents=True, exist_ok=True)
        mine = shards.process_block(shards.shard_ranges(len(rec), fp.shard_size), ctx.process_index,
                                    ctx.process_count)
        shards.clean_temporaries(folder, mine)
        todo = [g for g in mine if not shards.is_done(folder, g, r)]
        stats["resumed_shards"] += len(mine) - len(todo)
        task = ctx.reporter.task(f"trunk {split}", total=sum(b - a for a, b in mine) * r, unit="view")
        task.advance((sum(b - a for a, b in mine) - sum(b - a for a, b in todo)) * r)
        t0 = time.perf_counter()
        try:
            for group in shards.contiguous(todo):
                lo, hi = group[0][0], group[-1][1]
                fn = functools.partial(_views_at, spec=backbone.spec, plan=plan, offset=lo, fn=image_views)
                stream = decoded_views(data.sources(split, lo, hi), rec.ids[lo:hi], backbone.spec, ("center",),
                                       False, workers, depth=2 * fp.batch_size + workers, view_fn=fn)
                singles = (v[None] for vs in stream for v in vs)  # one "image" per view: (1, S, S, 3)
                try:
                    for g in group:
                        rows = embedder.embed(singles, (g[1] - g[0]) * r)  # (images * r, h*w*c)
                        shards.write_durable(shards.shard_path(folder, g), rows)
                        stats["computed_rows"] += len(rows)
                        task.advance(len(rows))
                finally:
                    stream.close()
        finally:
            task.close()
        stats["seconds"] += time.perf_counter() - t0
    return shards.write_process_stats(out, ctx.process_index, stats, embedder.compile_seconds)


def _views_at(img: Any, pos: int, *, spec: Any, plan: Any, offset: int, fn: Any) -> np.ndarray:
    return fn(img, spec, plan, offset + pos)  # seeded by the image's index in its split


def finalize(ctx: StageContext) -> dict[str, Any]:
    """Assemble the shards into one ``activations.npy`` per split; the stage's summary."""
    fp: FinetuneParams = ctx.params["finetune"]
    out = Path(ctx.out_dir)
    if not fp.enabled:
        write_trunk_info(out, TrunkInfo(enabled=False))
        return {"enabled": False}
    data = load_data(ctx.inputs["data"])
    stats = shards.read_process_stats(out)
    shape = stats[0]["activation_shape"]
    flat = int(np.prod(shape))
    for split in SPLITS:
        rec = data.splits[split]
        r = rows_per_image(fp, split)
        folder = out / split / "shards"
        if artifact.split_assembled(out, split) and not folder.exists():
            continue  # assembled by an earlier finalize that was killed later on
        shards.assemble_split("trunk", split, folder, artifact.activations_path(out, split),
                              shards.shard_ranges(len(rec), fp.shard_size), r, flat, np.dtype(fp.dtype))
        artifact.write_split_labels_ids(out, split, rec.labels, rec.ids)  # last: marks the split done
        shutil.rmtree(folder)
    artifact.write_trunk_classes(out, data.classes)
    info = TrunkInfo(enabled=True, backbone=stats[0]["backbone"], cut=fp.unfreeze, activation_shape=tuple(shape),
                     dtype=fp.dtype, views=fp.views, images={s: len(data.splits[s]) for s in SPLITS},
                     rows_per_image={s: rows_per_image(fp, s) for s in SPLITS})
    write_trunk_info(out, info)
    shutil.rmtree(out / "stats", ignore_errors=True)
    rows = sum(s["computed_rows"] for s in stats)
    seconds = max(s["seconds"] for s in stats)
    summary = {"backbone": info.backbone, "cut": fp.unfreeze, "activation_shape": shape,
               "computed_views": rows, "resumed_shards": sum(s["resumed_shards"] for s in stats),
               "seconds": seconds, "views_per_s": round(rows / seconds, 2) if seconds else None,
               "compile_seconds": max(s["compile_seconds"] for s in stats),
               "megabytes": round(sum(artifact.activations_path(out, s).stat().st_size for s in SPLITS) / 1e6, 1)}
    ctx.log(f"trunk of {info.backbone} up to {fp.unfreeze}: {rows} views -> {shape} {fp.dtype} in "
            f"{seconds:.1f} s ({summary['views_per_s']} views/s, compile {summary['compile_seconds']} s), "
            f"{summary['resumed_shards']} shard(s) resumed, {summary['megabytes']} MB")
    return summary


STAGE = Stage(
    name="trunk",
    run=run,
    finalize=finalize,
    deps=("data",),
    sections=("backbone", "finetune"),
    version="1",
    schemas={"finetune": FinetuneParams},
    resumable=True,
    all_processes=True,
    description="frozen trunk (layers before finetune.unfreeze) over every image + augmented views; cached",
)
