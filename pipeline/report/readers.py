"""Read the stages' output folders into what the report's sections draw.

Every reader returns None (or an empty result) when its stage did not run, so the report can say
"not run" for that part instead of failing. Each reads a stage's output exactly as its topic
package writes it (the data stage through `pipeline.sources.dataset`, the heads through
`pipeline.heads.artifact`); none probes alternative keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pipeline.params import to_plain
from pipeline.plain import canonical, flatten, load_json  # noqa: F401 (the report's readers use them as readers.*)
from pipeline.sources.dataset import DataSet, has_data, load_data
from pipeline.sources.dataset import read_skipped as read_skipped_records


def manifest(folder: Path | None) -> dict | None:
    return load_json(Path(folder) / "manifest.json") if folder else None


# --- params ---------------------------------------------------------------------------------------

def section_defaults(schema: Mapping[str, type]) -> dict[str, dict]:
    """Default values of every params section the graph defines (section -> plain dict)."""
    out = {}
    for name, cls in schema.items():
        try:
            out[name] = to_plain(cls())
        except TypeError:  # a section with a required field has no default to compare with
            out[name] = {}
    return out


def run_params(manifests: Mapping[str, Mapping | None], own: Mapping[str, Any]) -> dict[str, dict]:
    """The params each section had in this run, from the upstream manifests and the report's own.

    Args:
      manifests: stage name -> its manifest (or None).
      own: the report's declared sections (dataclasses).

    Returns:
      section -> plain dict of values. A section read by several stages appears once.
    """
    out: dict[str, dict] = {}
    for m in manifests.values():
        for section, values in ((m or {}).get("params") or {}).items():
            out.setdefault(section, values)
    for section, values in own.items():
        out[section] = to_plain(values)
    return out


def param_rows(params: Mapping[str, Mapping], defaults: Mapping[str, Mapping]) -> list[tuple[str, Any, Any, bool]]:
    """(dotted key, value, default, differs) for every leaf param, sections in the given order."""
    rows = []
    for section, values in params.items():
        got = flatten(values, section)
        want = flatten(defaults[section], section) if defaults.get(section) else {}
        for key in list(got) + [k for k in want if k not in got]:
            v, d = got.get(key, "<unset>"), want.get(key, "<no default>")
            rows.append((key, v, d, canonical(v) != canonical(d)))
    return rows


# --- data -----------------------------------------------------------------------------------------

def read_data(data_dir: Path | None) -> DataSet | None:
    """The data stage's output (`pipeline.sources.dataset`), or None when there is none."""
    return load_data(data_dir) if has_data(data_dir) else None


def read_classes(data: DataSet | None, features_dir: Path | None) -> list[str] | None:
    """Class names: the data stage's, else the features stage's classes.json (the same list)."""
    if data is not None:
        return list(data.classes)
    from pipeline.features.artifact import read_classes as read_features_classes

    try:
        c = read_features_classes(features_dir) if features_dir is not None else None
    except (OSError, ValueError):  # absent or unreadable: no classes to show
        c = None
    return [str(x) for x in c] if c else None


def read_skipped(data: DataSet | None) -> list[tuple[str, str]]:
    """Files the data stage left out, as (id, "kind: reason")."""
    if data is None:
        return []
    return [(s.id, f"{s.kind}: {s.reason}" if s.kind and s.reason else s.kind or s.reason)
            for s in read_skipped_records(data.root)]


def split_sizes(data: DataSet | None, features_dir: Path | None) -> dict[str, int]:
    """Images per split: the data stage's, else the features stage's info.json ``splits``."""
    if data is not None:
        return {s: len(r) for s, r in data.splits.items()}
    from pipeline.features.artifact import read_info

    try:
        return {s: int(n) for s, n in read_info(features_dir).splits.items()} if features_dir is not None else {}
    except FileNotFoundError:
        return {}


class ImageFinder:
    """Finds the original photo of an image id, to draw a thumbnail from it.

    A folder (or sample) id is a path relative to the folder the data stage read (info.json
    ``path``). Images with no file on disk (a tfds id names a record inside TFRecords) come from
    the thumbnails the data stage kept (`pipeline.thumbs`), so the report never imports tensorflow.
    """

    def __init__(self, data_dir: Path | None):
        from pipeline.thumbs import Thumbnails

        self.thumbs = Thumbnails(data_dir)
        data = read_data(data_dir)
        self.root = Path(data.info["path"]) if data is not None and data.info["source"] != "tfds" else None

    def find(self, image_id: str) -> Path | None:
        path = self.root / image_id if self.root is not None else None
        return path if path is not None and path.is_file() else None

    def source(self, image_id: str) -> Path | bytes | None:
        """The photo's file, else the data stage's thumbnail of it (JPEG bytes), else None."""
        return self.find(image_id) or self.thumbs.get(image_id)


# --- heads ----------------------------------------------------------------------------------------

def headline(split_metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scalar metrics of one split that are worth a column (in a fixed order)."""
    keys = ("accuracy", "mean_per_class_accuracy", "log_loss", "top5_accuracy", "n")
    return {k: split_metrics[k] for k in keys if isinstance(split_metrics.get(k), (int, float))}
