"""The data stage's output: its one writer (`write_data`) and readers (`load_data`, `read_skipped`).

  classes.json  list of class names; index = label
  splits.json   {split: {"ids": [...], "labels": [...]}} (+ "tfds_split", "indices" for tfds)
  skipped.json  [{"id": ..., "kind": ..., "reason": ...}] files left out, with why
  info.json     source, "path" (folder and sample) or "name"/"version"/"data_dir" (tfds), split
                sizes, class count, the input fingerprint and a content digest
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

from pipeline.errors import UserError
from pipeline.sources.tfds_source import tfds_read


@dataclasses.dataclass(frozen=True)
class SplitRecords:
    """One split as the data stage fixed it.

    Attributes:
      ids: image ids in reading order (relative paths, or tfds ids).
      labels: class index per image.
      indices: tfds only: absolute index of each image in `tfds_split` (ascending).
      tfds_split: tfds only: the tfds split the images come from.
    """

    ids: list[str]
    labels: list[int]
    indices: list[int] | None = None
    tfds_split: str | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclasses.dataclass(frozen=True)
class DataSet:
    """The data stage's output, read back. Use `sources` to read a split's images in order."""

    root: Path
    info: Mapping[str, Any]
    classes: list[str]
    splits: Mapping[str, SplitRecords]

    def sources(self, split: str, start: int = 0, stop: int | None = None) -> Iterator[bytes | Path]:
        """The images of ``split[start:stop]`` in order: a Path (folder) or encoded bytes (tfds).

        `pipeline.images.decode_image` takes either. Folder images are read by whoever decodes
        them (in parallel threads); tfds records are read sequentially here.
        """
        rec = self.splits[split]
        stop = len(rec) if stop is None else min(stop, len(rec))
        if start >= stop:
            return iter(())
        if self.info["source"] != "tfds":  # a folder, or the embedded sample (a folder too)
            base = Path(self.info["path"])
            return (base / i for i in rec.ids[start:stop])
        return self._tfds_sources(rec, start, stop)

    def _tfds_sources(self, rec: SplitRecords, start: int, stop: int) -> Iterator[bytes]:
        import tensorflow_datasets as tfds

        # Pin the version the data stage read, so a newer prepared version is never mixed in.
        builder = tfds.builder(f"{self.info['name'].split(':')[0]}:{self.info['version']}",
                               data_dir=self.info.get("data_dir"))
        want = rec.indices[start:stop]
        ds = tfds_read(builder, f"{rec.tfds_split}[{want[0]}:{want[-1] + 1}]", with_images=True)
        pos = 0
        for n, ex in enumerate(ds.as_numpy_iterator()):
            if want[0] + n != want[pos]:
                continue  # a record of another split (val carved from train) lies between ours
            got = ex["tfds_id"].decode()
            if got != rec.ids[start + pos]:
                raise UserError(
                    f"tfds dataset {self.info['name']} changed since the data stage ran: record "
                    f"{rec.tfds_split}[{want[pos]}] is {got}, expected {rec.ids[start + pos]}. "
                    "Rerun with --force data.")
            yield ex["image"]
            pos += 1
            if pos == len(want):
                return
        raise UserError(f"tfds dataset {self.info['name']} has fewer records in {rec.tfds_split} "
                        "than when the data stage ran. Rerun with --force data.")


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A file the data stage left out: its id, the kind of problem, and a readable reason."""

    id: str
    kind: str
    reason: str


def write_data(out_dir: str | os.PathLike, classes: list[str], splits: Mapping[str, SplitRecords],
               skipped: list[Skipped], info: Mapping[str, Any]) -> None:
    """Write the data stage's output files (each replaced atomically)."""
    out = Path(out_dir)
    records = {s: {"ids": r.ids, "labels": r.labels,
                   **({"tfds_split": r.tfds_split, "indices": r.indices} if r.tfds_split is not None else {})}
               for s, r in splits.items()}
    _write_json(out / "classes.json", classes)
    _write_json(out / "splits.json", records)
    _write_json(out / "skipped.json", [dataclasses.asdict(s) for s in skipped])
    _write_json(out / "info.json", info)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    # splits.json can hold 10^5 ids: compact. The others are small and meant to be read.
    tmp.write_text(json.dumps(obj, indent=None if path.name == "splits.json" else 1))
    os.replace(tmp, path)


def read_skipped(data_dir: str | os.PathLike) -> list[Skipped]:
    """The files the data stage left out (skipped.json)."""
    return [Skipped(**r) for r in json.loads((Path(data_dir) / "skipped.json").read_text())]


def has_data(data_dir: str | os.PathLike | None) -> bool:
    """Whether `data_dir` holds a data stage output (its splits.json), so `load_data` can read it."""
    return data_dir is not None and (Path(data_dir) / "splits.json").is_file()


def read_classes(data_dir: str | os.PathLike) -> list[str]:
    """The class names (index = label) alone, without reading every split's ids."""
    return list(json.loads((Path(data_dir) / "classes.json").read_text()))


def load_data(data_dir: str | os.PathLike) -> DataSet:
    """Read the data stage's output folder (classes.json, splits.json, info.json)."""
    root = Path(data_dir)
    info = json.loads((root / "info.json").read_text())
    classes = read_classes(root)
    raw = json.loads((root / "splits.json").read_text())
    splits = {s: SplitRecords(ids=v["ids"], labels=v["labels"], indices=v.get("indices"),
                              tfds_split=v.get("tfds_split")) for s, v in raw.items()}
    return DataSet(root, info, classes, splits)
