"""Stage `features`: run the frozen backbone once over every image; cache the features on disk.

Reads the data stage's splits, decodes and preprocesses images on the CPU in parallel threads
(the backbone spec's exact PIL resize and centre crop), embeds them with one compiled, data-
sharded backbone call (`pipeline.featurize`), and streams the rows to disk in checkpointed shards
(`pipeline.shards`). A killed run (even SIGKILL) resumes from the last finished shard, and the
result is bit-identical to an uninterrupted run: shards start on batch boundaries, so every batch
holds the same images either way.

Multi-process runs: every process computes a contiguous block of each split's shards (named
after their global image ranges); `finalize`, run by process 0 after all processes finished,
assembles the shards into the output files below. Memory stays flat: one shard of rows and a few
batches of pixels are in memory at a time, whatever the number of images.

Decoding: a thread pool over PIL, not tf.data: it kept up with tf.data's AUTOTUNE on this
project's CPUs, and tf.image.resize's bicubic differs from PIL's, which the backbone's reference
preprocessing uses (figures: docs/benchmarks.md).

Outputs (the contract with `heads`):
  classes.json           class names (index = label)
  info.json              {"backbone", "feature_dim", "dtype", "splits": {split: rows}, "views", ...}
  <split>/features.npy   (N, D) float32 or float16 (N x views rows with ``reduce: rows``)
  <split>/labels.npy     (N,) int32
  <split>/ids.json       N image ids (``<id>#<view>`` with ``reduce: rows`` and several views)
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Literal, Mapping, Union

import numpy as np

from pipeline import shards
from pipeline.features import artifact
from pipeline.features.artifact import FeaturesInfo, write_info
from pipeline.features.params import FeaturesParams, input_spec, view_plan
from pipeline.params import ParamsError, spec
from pipeline.sources import SPLITS, load_data
from pipeline.stage import Stage, StageContext


@dataclasses.dataclass(frozen=True)
class BackboneParams:
    """params.yaml section ``backbone`` (read by features, ideal and adversarial)."""

    name: Union[str, tuple[str, ...]] = spec(
        "efficientnet_lite0", min_len=1,
        help="registered backbone (see `python -m pipeline backbones`), or a list of them: each one's "
             "features are cached on their own and the heads concatenate them")
    dtype: Literal["float32", "bfloat16"] = spec("float32", help="compute dtype of the backbone")
    depthwise: Literal["auto", "xla", "shifted"] = spec(
        "auto", help="depthwise conv implementation: auto picks shifted on CPU, xla on GPU/TPU")

    @property
    def names(self) -> tuple[str, ...]:
        """Every backbone named, in order (one for a plain name)."""
        return (self.name,) if isinstance(self.name, str) else tuple(self.name)

    @property
    def primary(self) -> str:
        """The one backbone of stages that run a single network (ideal, adversarial): the first."""
        return self.names[0]

    def validate(self) -> None:
        from pipeline.models import registry  # cheap: specs only, no jax

        known = registry.names()
        for i, name in enumerate(self.names):
            if name not in known:
                where = "name" if isinstance(self.name, str) else f"name[{i}]"
                raise ParamsError(f"{where}: {name!r} is not a registered backbone; choose one of "
                                  f"{', '.join(known)}.")
        if len(set(self.names)) != len(self.names):
            raise ParamsError(f"name: {list(self.names)!r} lists a backbone twice; list each once.")


def fan_out(sections: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One features pass per backbone of ``backbone.name``, each with a plain name.

    A part's params are exactly those of a run with that one backbone, so its key (and cache
    folder) is the same as that run's: adding a backbone to the list costs one pass.
    """
    bp: BackboneParams = sections["backbone"]
    return [{**sections, "backbone": dataclasses.replace(bp, name=n)} for n in bp.names]


def _n_views(fp: FeaturesParams) -> int:
    crops, flip = view_plan(fp)
    return len(crops) * (2 if flip else 1)


def _rows_per_image(fp: FeaturesParams) -> int:
    return _n_views(fp) if fp.reduce == "rows" else 1


def run(ctx: StageContext) -> dict[str, Any]:
    """Compute this process's shards with the registered backbone (see `extract`)."""
    from pipeline.models import registry

    bp: BackboneParams = ctx.params["backbone"]
    fp: FeaturesParams = ctx.params["features"]
    backbone = registry.load_backbone(bp.name, ctx.cache_dir, dtype=bp.dtype, depthwise=bp.depthwise)
    return extract(ctx, dataclasses.replace(backbone, spec=input_spec(backbone.spec, fp)))


def extract(ctx: StageContext, backbone: Any) -> dict[str, Any]:
    """Compute and checkpoint the feature shards this process owns, skipping finished ones.

    Args:
      ctx: the stage context (``features`` params, ``inputs["data"]``, ``out_dir``).
      backbone: a loaded `pipeline.models.registry.Backbone`.

    Returns:
      This process's counts and timings (also written to ``stats/p<index>.json`` for `finalize`).
    """
    from pipeline.featurize import BatchEmbedder, decoded_views, default_workers

    fp: FeaturesParams = ctx.params["features"]
    data = load_data(ctx.inputs["data"])
    out = Path(ctx.out_dir)
    crops, flip = view_plan(fp)
    rows = _rows_per_image(fp)
    embedder = BatchEmbedder(backbone, fp.batch_size, _n_views(fp), fp.reduce, fp.dtype)
    workers = fp.workers or default_workers()
    # Decode up to 4 batches ahead (it also fills the time XLA compiles), at most ~256 MB of pixels.
    image_bytes = _n_views(fp) * backbone.spec.input_size ** 2 * 3
    depth = max(fp.batch_size + workers, min(4 * fp.batch_size, (256 << 20) // image_bytes))
    stats = {"backbone": backbone.spec.name, "feature_dim": backbone.spec.feature_dim,
             "input_size": backbone.spec.input_size, "computed": 0, "resumed_shards": 0,
             "computed_shards": 0, "seconds": 0.0,
             "devices": len(embedder.devices)}
    for split in SPLITS:
        rec = data.splits[split]
        folder = out / split / "shards"
        folder.mkdir(parents=True, exist_ok=True)
        mine = shards.process_block(shards.shard_ranges(len(rec), fp.shard_size),
                                    ctx.process_index, ctx.process_count)
        shards.clean_temporaries(folder, mine)
        todo = [r for r in mine if not shards.is_done(folder, r, rows)]
        stats["resumed_shards"] += len(mine) - len(todo)
        task = ctx.reporter.task(f"features {split}", total=sum(b - a for a, b in mine), unit="img")
        task.advance(sum(b - a for a, b in mine) - sum(b - a for a, b in todo))
        t0 = time.perf_counter()
        try:
            for group in shards.contiguous(todo):
                lo, hi = group[0][0], group[-1][1]
                stream = decoded_views(data.sources(split, lo, hi), rec.ids[lo:hi], backbone.spec,
                                       crops, flip, workers, depth=depth)
                try:
                    for r in group:
                        feats = embedder.embed(stream, r[1] - r[0])      # (images x rows, D)
                        shards.write_durable(shards.shard_path(folder, r), feats)
                        stats["computed"] += r[1] - r[0]
                        stats["computed_shards"] += 1
                        task.advance(r[1] - r[0])
                finally:
                    stream.close()  # stops the decoding threads if embedding failed
        finally:
            task.close()
        stats["seconds"] += time.perf_counter() - t0
    return shards.write_process_stats(out, ctx.process_index, stats, embedder.compile_seconds)


def finalize(ctx: StageContext) -> dict[str, Any]:
    """Assemble every process's shards into the output files; the stage's summary.

    Run by process 0 after every process finished `run` (right after `run` in one process).
    """
    from pipeline.models import registry

    fp: FeaturesParams = ctx.params["features"]
    bp: BackboneParams = ctx.params["backbone"]
    data = load_data(ctx.inputs["data"])
    out = Path(ctx.out_dir)
    rows = _rows_per_image(fp)
    # What the processes actually ran (their backbone's spec), not what params name.
    stats = shards.read_process_stats(out)
    native = registry.get_spec(bp.name)
    spec = {"backbone": bp.name, "feature_dim": native.feature_dim,
            "input_size": input_spec(native, fp).input_size}
    if stats:
        spec = {k: stats[0][k] for k in spec}
    dim = spec["feature_dim"]
    dtype = np.dtype(fp.dtype)
    sizes = {}
    for split in SPLITS:
        rec = data.splits[split]
        folder = out / split / "shards"
        sizes[split] = len(rec) * rows
        if artifact.split_assembled(out, split) and not folder.exists():
            continue  # assembled by an earlier finalize that was killed later on
        shards.assemble_split("features", split, folder, artifact.features_path(out, split),
                              shards.shard_ranges(len(rec), fp.shard_size), rows, dim, dtype)
        labels = np.repeat(np.asarray(rec.labels, np.int32), rows)
        ids = rec.ids if rows == 1 else [f"{i}#{v}" for i in rec.ids for v in range(rows)]
        artifact.write_split_labels_ids(out, split, labels, ids)   # last: marks the split done
        shutil.rmtree(folder)
    artifact.write_classes(out, data.classes)
    info = FeaturesInfo(backbone=spec["backbone"], feature_dim=dim, dtype=fp.dtype, splits=sizes,
                        images={s: len(data.splits[s]) for s in SPLITS}, views=_n_views(fp),
                        augment=fp.augment, reduce=fp.reduce, input_size=spec["input_size"])
    write_info(out, info)
    shutil.rmtree(out / "stats", ignore_errors=True)
    computed = sum(s["computed"] for s in stats)
    seconds = max((s["seconds"] for s in stats), default=0.0)
    summary = {"backbone": spec["backbone"], "images": sum(info.images.values()), "feature_dim": dim,
               "dtype": fp.dtype, "computed": computed,
               "computed_per_process": [s["computed"] for s in stats],
               "resumed_shards": sum(s["resumed_shards"] for s in stats),
               "seconds": seconds, "images_per_s": round(computed / seconds, 2) if seconds else None,
               # Test-time augmentation multiplies the backbone's work: say by how much.
               "views": info.views, "augment": fp.augment, "reduce": fp.reduce,
               "backbone_passes": computed * info.views,
               "compile_seconds": max((s["compile_seconds"] for s in stats), default=None)}
    views = f" x {info.views} views ({fp.augment}, {fp.reduce})" if info.views > 1 else ""
    ctx.log(f"{summary['images']} images{views} -> {dim}-d {fp.dtype} features with {spec['backbone']}: computed "
            f"{computed} in {seconds:.1f} s ({summary['images_per_s']} img/s, compile "
            f"{summary['compile_seconds']} s), {summary['resumed_shards']} shard(s) resumed")
    return summary


STAGE = Stage(
    name="features",
    run=run,
    finalize=finalize,
    deps=("data",),
    sections=("backbone", "features"),
    version="1",
    schemas={"backbone": BackboneParams, "features": FeaturesParams},
    resumable=True,
    all_processes=True,
    description="frozen backbone over every image once; features cached per split, resumable shards",
    fan_out=fan_out,
)
