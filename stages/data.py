"""Stage `data`: get a labelled image set and fix its train / val / test splits.

Sources: ``sample`` (the embedded demo sample: 111 real Oxford-IIIT Pet photos inside the
package, read like a folder), ``tfds`` (any tensorflow-datasets image-classification dataset;
tfds's own splits where it has them, validation and, when missing, test carved from train) or
``folder`` (class folders, or train/ val/ test/ folders of class folders; see
`pipeline.sources.folders` for the layout rules).

Every folder image is decoded once here, in parallel threads, so that an image that cannot be
decoded (empty, truncated, not an image, zero-size, a decompression bomb) is skipped and listed
in ``skipped.json`` with its reason instead of failing a later stage. tfds images are not decoded
again: tfds encoded them itself when it prepared the dataset.

Outputs (in the stage's folder):
  classes.json  list of class names; index = label
  splits.json   {split: {"ids": [...], "labels": [...]}} (+ "tfds_split", "indices" for tfds)
  skipped.json  [{"id": ..., "kind": ..., "reason": ...}] files left out, with why
  info.json     source, split sizes, class count, the input fingerprint and a content digest
  thumbs.bin, thumbs.json   tfds only: a small JPEG of every photo, for the report
                            (`pipeline.thumbs`; folder photos are read from their files)

The input fingerprint (`fingerprint`) is what makes this stage stale when a photo is added or
changed: the runner hashes it into the key. For folders (and the sample) it hashes every file's
path and bytes, reading only the files whose stat changed since it last looked
(`pipeline.sources.digests`), so ``touch`` reruns nothing and `status` stays fast on big folders;
for tfds it is the dataset name, data dir and prepared versions found there. The content digest
in info.json (sha1 of every image used) records exactly which bytes went in.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, Literal, Mapping

from pipeline import sources
from pipeline.errors import UserError
from pipeline.params import ParamsError, spec
from pipeline.sources import DataSet, SplitRecords, load_data
from pipeline.sources.dataset import Skipped, write_data

__all__ = ["DataParams", "DataSet", "SplitRecords", "STAGE", "fingerprint", "load_data", "run"]
from pipeline.stage import Stage, StageContext
from pipeline.thumbs import ThumbnailWriter, make_thumbnail


@dataclasses.dataclass(frozen=True)
class DataParams:
    """params.yaml section ``data``."""

    source: Literal["sample", "tfds", "folder"] = spec(
        "sample", help="where the images come from: sample (the embedded demo: 111 Oxford-IIIT Pet "
                       "photos, offline), tfds (data.name) or folder (data.path)")
    name: str = spec("oxford_iiit_pet", help="tensorflow-datasets name (source: tfds), e.g. cats_vs_dogs")
    path: str | None = spec(None, help="folder of class folders, or of train/ val/ test/ (source: folder)")
    data_dir: str | None = spec(None, help="tfds data dir, a local folder or gs://... (default: tfds's)")
    val_fraction: float = spec(0.1, min=0.0, max=0.5,
                               help="share carved for validation when the source has no val split "
                                    "(of all images for class folders, of train otherwise)")
    test_fraction: float = spec(0.2, min=0.0, max=0.5,
                                help="share carved for test when the source has no test split")
    seed: int = spec(0, help="seed of the carved splits")
    max_per_class: int | None = spec(None, min=1,
                                     help="keep at most this many images per class in each split "
                                          "(smoke runs); null keeps all")

    def validate(self) -> None:
        if self.source == "folder" and not self.path:
            raise ParamsError("path: data.source is 'folder' but data.path is not set; "
                              "pass -S data.path=FOLDER (one sub-folder per class).")
        if self.source == "sample" and self.path:
            raise ParamsError(f"path: {self.path!r} is set but data.source is 'sample' (the embedded "
                              "demo photos); to read that folder pass -S data.source=folder.")


def fingerprint(params: Mapping[str, Any], local_dir: Path | None = None) -> str:
    """Fingerprint of the inputs outside params; the runner hashes it into the key.

    Args:
      params: the stage's declared sections (uses ``params["data"]``).
      local_dir: the cache's local folder, where the folder digests' stat memo is kept.

    Returns:
      For a folder or the sample: a hash of every file's path and bytes (files whose stat is
      unchanged are not read again). For tfds: the dataset name, data dir and the prepared
      versions found there.
    """
    p = params["data"]
    memo = Path(local_dir) / "data" / "digests" if local_dir is not None else None
    if p.source == "folder":
        return sources.folder_fingerprint(p.path, memo)
    if p.source == "sample":
        return "sample:" + sources.folder_fingerprint(sources.sample_root(), memo)
    return sources.tfds_fingerprint(p.name, p.data_dir)


# An item while splitting: (id, label name, extra) with extra = tfds index or None.
Item = tuple[str, str, Any]


def run(ctx: StageContext) -> dict[str, Any]:
    p: DataParams = ctx.params["data"]
    if p.source in ("folder", "sample"):
        splits, classes, skipped, info = _from_folder(p, ctx)
    else:
        splits, classes, skipped, info = _from_tfds(p, ctx)
    splits = {s: sources.limit_per_class(splits[s], p.max_per_class, p.seed, s) for s in splits}
    label_of = {c: i for i, c in enumerate(classes)}
    records: dict[str, SplitRecords] = {}
    for s in sources.SPLITS:
        items = [it for c in splits.get(s, {}) for it in splits[s][c]]
        # Reading order: by path for folders, by tfds index for tfds (sequential reads).
        items.sort(key=lambda it: it[2] if info["source"] == "tfds" else it[0])
        tfds = info["source"] == "tfds"
        records[s] = SplitRecords(ids=[it[0] for it in items], labels=[label_of[it[1]] for it in items],
                                  indices=[it[2] for it in items] if tfds else None,
                                  tfds_split=info["tfds_splits"][s] if tfds else None)
    sizes = {s: len(records[s]) for s in records}
    if sizes["train"] == 0:
        raise UserError(f"data: no usable training image in {info.get('path') or info.get('name')} "
                        f"({len(skipped)} file(s) skipped; see skipped.json in {ctx.out_dir}).")
    missing = [c for c in classes if not any(label_of[c] == l for l in records["train"].labels)]
    if missing:
        ctx.log(f"warning: {len(missing)} class(es) have no training image: {', '.join(missing[:5])}")
    kinds = collections.Counter(k for _, k, _ in skipped)
    info.update({"splits": sizes, "num_classes": len(classes), "fingerprint": fingerprint(ctx.params, ctx.cache_dir),
                 "skipped": dict(sorted(kinds.items()))})
    write_data(ctx.out_dir, classes, records, [Skipped(i, k, r) for i, k, r in skipped], info)
    where = info.get("path") or info.get("name")
    line = (f"{sum(sizes.values())} images in {len(classes)} classes from {where} "
            f"(train {sizes['train']} / val {sizes['val']} / test {sizes['test']})")
    if skipped:
        line += f"; skipped {len(skipped)}: " + ", ".join(f"{n} {k}" for k, n in kinds.most_common())
        line += " (see skipped.json)"
    ctx.log(line)
    return {"images": sum(sizes.values()), "classes": len(classes), **sizes, "skipped": len(skipped)}


def _group(items: list[Item]) -> dict[str, list[Item]]:
    by: dict[str, list[Item]] = collections.defaultdict(list)
    for it in items:
        by[it[1]].append(it)
    return dict(by)


def _carve_missing(given: dict[str, list[Item]], p: DataParams) -> dict[str, dict[str, list[Item]]]:
    """Given splits (train at least) -> class-grouped train/val/test, carving the missing ones."""
    pool = _group(given["train"])
    n = len(given["train"])
    out: dict[str, dict[str, list[Item]]] = {}
    for s, frac in (("test", p.test_fraction), ("val", p.val_fraction)):
        if s in given:
            out[s] = _group(given[s])
        else:
            out[s], pool = sources.carve(pool, round(frac * n), p.seed, s)
    out["train"] = pool
    return out


def _verify(root: Path, files: list[tuple[str, str, int, int]], ctx: StageContext
            ) -> tuple[set[str], list[tuple[str, str, str]], dict[str, str]]:
    """Decode every file once in parallel threads; return (good ids, skipped, id -> sha1)."""
    from pipeline import images

    def check(entry: tuple[str, str, int, int]) -> tuple[str, str | None, str | None, str]:
        rel = entry[0]
        try:
            data = images.read_bytes(root / rel)
            digest = hashlib.sha1(data).hexdigest()
            # min_size=1: large JPEGs decode at 1/8 scale; every byte is still entropy-decoded,
            # so a truncated or corrupt file fails here as it would at full size.
            images.decode_image(data, name=rel, min_size=1)
            return rel, None, None, digest
        except images.ImageDecodeError as e:
            return rel, e.kind, e.reason, ""

    good: set[str] = set()
    skipped: list[tuple[str, str, str]] = []
    digests: dict[str, str] = {}
    task = ctx.reporter.task("verify images", total=len(files), unit="img")
    workers = min(32, 2 * (os.cpu_count() or 1))
    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for rel, kind, reason, digest in pool.map(check, files, chunksize=8):
                if kind is None:
                    good.add(rel)
                    digests[rel] = digest
                else:
                    skipped.append((rel, kind, reason))
                task.advance(1)
    finally:
        task.close()
    return good, skipped, digests


def _from_folder(p: DataParams, ctx: StageContext):
    root = sources.sample_root() if p.source == "sample" else sources.check_folder(p.path)
    scan = sources.scan_folder(root)
    all_files = [f for fs in scan.files.values() for f in fs]
    good, skipped, digests = _verify(root, all_files, ctx)
    skipped = sorted(list(scan.ignored) + skipped)
    given = {s: [(rel, cls, None) for rel, cls, _, _ in fs if rel in good]
             for s, fs in scan.files.items()}
    if scan.layout == "classes":
        given = {"train": given.get(None, [])}
    elif "train" not in given:
        given["train"] = []
    classes = sorted({it[1] for its in given.values() for it in its})
    if not classes:
        raise UserError(f"data.path: no decodable image inside a class folder under {root} "
                        f"({len(skipped)} file(s) skipped; see skipped.json). Put the images in "
                        "one sub-folder per class.")
    digest = hashlib.sha256("".join(f"{r}\0{digests[r]}\n" for r in sorted(good)).encode("utf-8", "surrogateescape")).hexdigest()
    info = {"source": p.source, "path": str(root.resolve()), "layout": scan.layout,
            "content_digest": digest}
    return _carve_missing(given, p), classes, skipped, info


def _from_tfds(p: DataParams, ctx: StageContext):
    builder = sources.prepare_tfds(p.name, p.data_dir)
    _, label_key = sources.tfds_keys(builder)
    classes = list(builder.info.features[label_key].names)
    ours = sources.tfds_splits(builder)
    given: dict[str, list[Item]] = {}
    h = hashlib.sha256()
    # The report cannot read TFRecords: keep a small thumbnail of every photo, made in threads
    # (PIL releases the GIL) while tf.data reads on; at most 256 photos wait in memory.
    writer = ThumbnailWriter(Path(ctx.out_dir))
    pending: collections.deque = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        for s, tfds_split in ours.items():
            task = ctx.reporter.task(f"list {tfds_split}", total=None, unit="img")
            items = []
            for n, ex in enumerate(sources.tfds_read(builder, tfds_split, with_images=True).as_numpy_iterator()):
                tid = ex["tfds_id"].decode()
                items.append((tid, classes[int(ex["label"])], n))
                h.update(f"{tid}\0{int(ex['label'])}\n".encode())
                pending.append((tid, pool.submit(make_thumbnail, ex["image"], tid)))
                while len(pending) > 256:
                    tid_done, fut = pending.popleft()
                    writer.add(tid_done, fut.result())
                task.advance(1)
            task.close()
            given[s] = items
        while pending:
            tid_done, fut = pending.popleft()
            writer.add(tid_done, fut.result())
    kept = writer.close()
    info = {"source": "tfds", "name": p.name, "version": str(builder.version),
            "data_dir": p.data_dir, "tfds_splits": {s: ours.get(s, ours["train"]) for s in sources.SPLITS},
            "content_digest": h.hexdigest(), "thumbnails": kept}
    return _carve_missing(given, p), classes, [], info


STAGE = Stage(
    name="data",
    run=run,
    sections=("data",),
    version="2",
    schemas={"data": DataParams},
    fingerprint=fingerprint,
    description="labelled images from tfds or a folder; seeded stratified splits; broken files listed",
)
