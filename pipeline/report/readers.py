"""Read each stage's output folder into plain data for the report, `show` and `compare`.

Every reader returns None (or an empty result) when its files are absent, so the report can say
"not run" for that part instead of failing. The readers accept the few shapes a stage's JSON may
reasonably take (a head's split metrics under ``splits`` or directly under the head, labels as
indices or names) so that a small format change upstream is a one-line fix here, not a rewrite.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from pipeline.params import to_plain
from pipeline.plain import canonical, flatten, load_json  # noqa: F401 (the report's readers use them as readers.*)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".gif")
SPLIT_ORDER = ("train", "val", "validation", "test")


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

def read_classes(*folders: Path | None) -> list[str] | None:
    """classes.json from the first folder that has it (data, then features)."""
    for f in folders:
        if f is None:
            continue
        c = load_json(Path(f) / "classes.json")
        if isinstance(c, Mapping):
            c = c.get("classes") or c.get("names")
        if isinstance(c, list) and c:
            return [str(x) for x in c]
    return None


def read_skipped(data_dir: Path | None) -> list[tuple[str, str]]:
    """Files the data stage left out, as (path, reason). Accepts a list of records or a mapping."""
    if data_dir is None:
        return []
    raw = load_json(Path(data_dir) / "skipped.json")
    if isinstance(raw, Mapping):
        raw = raw.get("skipped", raw)
    out = []
    if isinstance(raw, Mapping):
        out = [(str(k), str(v)) for k, v in raw.items()]
    elif isinstance(raw, list):
        for r in raw:
            if isinstance(r, Mapping):
                path = r.get("path") or r.get("file") or r.get("id") or "?"
                reason = str(r.get("reason") or r.get("error") or "")
                kind = r.get("kind")
                out.append((str(path), f"{kind}: {reason}" if kind and reason else str(kind or reason)))
            elif isinstance(r, (list, tuple)) and len(r) >= 2:
                out.append((str(r[0]), str(r[1])))
            else:
                out.append((str(r), ""))
    return out


def split_records(data_dir: Path | None) -> dict[str, list[Mapping]]:
    """Per split, the data stage's records (``<split>.json``, ``splits.json`` or ``records.json``)."""
    if data_dir is None:
        return {}
    data_dir = Path(data_dir)
    out: dict[str, list[Mapping]] = {}
    for split in SPLIT_ORDER:
        for cand in (data_dir / f"{split}.json", data_dir / split / "records.json", data_dir / f"{split}.jsonl"):
            if cand.suffix == ".jsonl" and cand.is_file():
                out[split] = [json.loads(line) for line in cand.read_text().splitlines() if line.strip()]
            else:
                raw = load_json(cand)
                if isinstance(raw, Mapping):
                    raw = raw.get("records") or raw.get("items")
                if isinstance(raw, list):
                    out[split] = raw
            if split in out:
                break
    for name in ("splits.json", "records.json"):
        raw = load_json(data_dir / name)
        if isinstance(raw, Mapping):
            raw = raw.get("splits", raw)
            for split, recs in raw.items():
                if isinstance(recs, Mapping) and isinstance(recs.get("ids"), list):
                    # Columns ({"ids": [...], "labels": [...]}) as the data stage writes them.
                    labels = recs.get("labels") or [None] * len(recs["ids"])
                    recs = [{"id": i, "label": lab} for i, lab in zip(recs["ids"], labels)]
                if isinstance(recs, list):
                    out.setdefault(split, recs)
    return out


def split_sizes(data_dir: Path | None, features_dir: Path | None) -> dict[str, int]:
    """Images per split: from the data stage's records, else from the features' info.json."""
    sizes = {s: len(r) for s, r in split_records(data_dir).items()}
    info = load_json(Path(features_dir) / "info.json") if features_dir else None
    for s, n in ((info or {}).get("splits") or {}).items():
        sizes.setdefault(s, int(n))
    if data_dir is not None and not sizes:
        info = load_json(Path(data_dir) / "info.json") or {}
        for s, n in (info.get("splits") or info.get("split_sizes") or {}).items():
            sizes[s] = int(n if not isinstance(n, Mapping) else n.get("n", 0))
    order = {s: i for i, s in enumerate(SPLIT_ORDER)}
    return dict(sorted(sizes.items(), key=lambda kv: order.get(kv[0], 99)))


class ImageFinder:
    """Finds the original photo of an image id, to draw a thumbnail from it.

    Looks in the data stage's records (an ``id`` with a ``path``), then treats the id as a path
    relative to the folder the data params name (``data.path``), then as an absolute path.
    Images with no file on disk (a tfds id whose data lives in TFRecords) come from the
    thumbnails the data stage kept (`pipeline.thumbs`), so the report never imports tensorflow.
    """

    def __init__(self, data_dir: Path | None, data_params: Mapping[str, Any] | None):
        from pipeline.thumbs import Thumbnails

        self.thumbs = Thumbnails(data_dir)
        self.by_id: dict[str, str] = {}
        for recs in split_records(data_dir).values():
            for r in recs:
                if isinstance(r, Mapping) and (r.get("path") or r.get("file")):
                    path = str(r.get("path") or r.get("file"))
                    self.by_id.setdefault(str(r.get("id", path)), path)
        self.roots = []
        info = (load_json(Path(data_dir) / "info.json") if data_dir else None) or {}
        if info.get("source", "folder") == "tfds":
            return  # tfds ids name records inside TFRecords, not files
        for src in (info, data_params or {}):
            for key in ("path", "root", "folder", "dir", "source_dir"):
                v = src.get(key)
                if isinstance(v, str) and v:
                    self.roots.append(Path(v).expanduser())

    def find(self, image_id: str) -> Path | None:
        cands = []
        if image_id in self.by_id:
            p = Path(self.by_id[image_id])
            cands.append(p)
            cands += [r / p for r in self.roots]
        cands += [r / image_id for r in self.roots]
        cands.append(Path(image_id))
        for c in cands:
            if c.suffix.lower() in IMAGE_EXTS + (".bmp", ".tif", ".tiff") and c.is_file():
                return c
            if c.is_file():
                return c
        return None

    def source(self, image_id: str) -> Path | bytes | None:
        """The photo's file, else the data stage's thumbnail of it (JPEG bytes), else None."""
        return self.find(image_id) or self.thumbs.get(image_id)


# --- heads ----------------------------------------------------------------------------------------

def headline(split_metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scalar metrics of one split that are worth a column (in a fixed order)."""
    keys = ("accuracy", "mean_per_class_accuracy", "log_loss", "top5_accuracy", "n")
    return {k: split_metrics[k] for k in keys if isinstance(split_metrics.get(k), (int, float))}


def normalize_curve(curve: Any) -> tuple[str, list[float], dict[str, list], dict[str, list]] | None:
    """A learning curve as (x label, x values, {series: y values}, {series: y std}).

    Accepts a list of points (``[{"n_train": 37, "logreg_accuracy": 0.5, ...}]``) or columns
    (``{"n_train": [...], "val_accuracy": [...]}``); the x column is the first whose name says
    size, count or fraction; a ``<series>_std`` column gives that series' spread.
    """
    if isinstance(curve, Mapping) and "points" in curve:
        curve = curve["points"]
    cols: dict[str, list] = {}
    if isinstance(curve, list) and curve and all(isinstance(p, Mapping) for p in curve):
        keys = [k for k in curve[0] if all(isinstance(p.get(k), (int, float)) and not isinstance(p.get(k), bool)
                                           or p.get(k) is None for p in curve)]
        cols = {k: [p.get(k) for p in curve] for k in keys}
    elif isinstance(curve, Mapping):
        cols = {k: list(v) for k, v in curve.items() if isinstance(v, list) and v
                and all(isinstance(x, (int, float)) or x is None for x in v)}
    if len(cols) < 2:
        return None
    xk = next((k for k in cols if any(w in k.lower() for w in ("n_train", "size", "fraction", "count", "per_class",
                                                                    "samples", "examples"))), None)
    xk = xk or next(iter(cols))
    skip = ("seconds", "time", "seed", "draws", "shots")
    series = {k: v for k, v in cols.items() if k != xk and len(v) == len(cols[xk]) and not k.endswith("_std")
              and not any(w in k.lower() for w in skip)}
    std = {k: cols[f"{k}_std"] for k in series if f"{k}_std" in cols}
    return (xk, cols[xk], series, std) if series else None


# --- image galleries (ideal, adversarial) ----------------------------------------------------------

def image_refs(obj: Mapping, folder: Path) -> dict[str, Path]:
    """The values of a record that name an image file in `folder` (key -> existing path)."""
    out = {}
    for k, v in obj.items():
        if isinstance(v, str) and v.lower().endswith(IMAGE_EXTS):
            p = Path(folder) / v
            if p.is_file():
                out[str(k)] = p
    return out


def image_items(obj: Any, folder: Path) -> list[Mapping]:
    """Every mapping in a JSON tree that names at least one existing image file in `folder`."""
    found: list[Mapping] = []

    def visit(o: Any) -> None:
        if isinstance(o, Mapping):
            if image_refs(o, folder):
                found.append(o)
                return
            for v in o.values():
                visit(v)
        elif isinstance(o, list):
            for v in o:
                visit(v)

    visit(obj)
    return found


def scalars(obj: Mapping, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The scalar fields of a record (nested mappings flattened), minus image names and `skip`."""
    skip = set(skip)
    out = {}
    for k, v in flatten(obj).items():
        if k in skip or k.split(".")[0] in skip:
            continue
        if isinstance(v, str) and v.lower().endswith(IMAGE_EXTS):
            continue
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
    return out
