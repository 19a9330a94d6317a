"""The inspect stage's output: one type (`InspectOutput`), one writer (`write`), one reader (`read`).

On disk (the PNGs are written by `pipeline.inspect.steps` and the stage; these files name them):

  inspect.json   `InspectOutput` but its points: {"backbone", "head" (the head explained, or the
                 stand-in probe on a fused run), "layers", "gradcam_layer",
                 "feature_maps": [`FeatureMapRecord`: {"photo", "id", "split", "label", "layer",
                   "shape": [h, w, c], "channels", "mean_activation", "image"}],
                 "gradcam": [`GradcamRecord`: {"id", "kind": "mistake"|"correct", "true", "pred",
                   "p_pred", "p_true", "p_pred_here", "image", "panels", "cam_shape"}],
                 "map": `MapSummary`: {"method", "points", "splits", "mistakes", "image"},
                 "seconds": {phase: seconds}}
  map.json       `PointMapData`: {"method", "seed", "classes", "head", and per point (equal
                 lengths): "ids", "split", "true", "pred" (class indices), "p" (of "pred"),
                 "xy" (the 2-D layout), "pos" (its [x, y] on map.png, 0..1, for the hover)}

`read` returns None where there is no inspect.json, and raises a `UserError` naming the file and
the fix (rerun the stage) where either file is there but not this shape. The report reads
through it. Changing this shape bumps ``stages/inspect.py``'s version.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from pipeline.errors import UserError, damaged_output

FILE = "inspect.json"
MAP_FILE = "map.json"


@dataclasses.dataclass(frozen=True)
class FeatureMapRecord:
    """One photo at one layer: ``image`` (relative to the output) shows the photo beside the
    `channels` most active channels (most active first, their `mean_activation`) of a layer
    output of `shape` (h, w, c)."""

    photo: int
    id: str
    split: str
    label: int
    layer: str
    shape: list[int]
    channels: list[int]
    mean_activation: list[float]
    image: str


@dataclasses.dataclass(frozen=True)
class GradcamRecord:
    """One explained test photo: the answering head's prediction (`p_pred`, `p_true` from its
    predictions file), the explained head's probability of `pred` (`p_pred_here`), and ``image``:
    `panels` side by side (photo, CAM of the predicted class, for a mistake CAM of the true class)."""

    id: str
    kind: Literal["mistake", "correct"]
    true: str
    pred: str
    p_pred: Union[float, None]
    p_true: Union[float, None]
    p_pred_here: float
    image: str
    panels: list[str]
    cam_shape: list[int]


@dataclasses.dataclass(frozen=True)
class MapSummary:
    """The 2-D map's settings and size: `points` placed by `method` from `splits`, `mistakes` of them."""

    method: str
    points: int
    splits: list[str]
    mistakes: int
    image: str


@dataclasses.dataclass(frozen=True)
class PointMapData:
    """map.json: every point of map.png, in one order across the lists."""

    method: str
    seed: int
    classes: list[str]
    head: str
    ids: list[str]
    split: list[str]
    true: list[int]
    pred: list[int]
    p: list[float]
    xy: list[list[float]]
    pos: list[list[float]]


@dataclasses.dataclass(frozen=True)
class InspectOutput:
    """Everything the inspect stage writes but its PNGs (inspect.json, and `points`: map.json)."""

    backbone: str
    head: str
    layers: list[str]
    gradcam_layer: str
    feature_maps: list[FeatureMapRecord]
    gradcam: list[GradcamRecord]
    map: MapSummary
    seconds: dict[str, float]
    points: PointMapData


def write(out_dir: str | Path, output: InspectOutput) -> None:
    """Write map.json and inspect.json into `out_dir`."""
    out = Path(out_dir)
    doc = dataclasses.asdict(output)
    (out / MAP_FILE).write_text(json.dumps(doc.pop("points")))  # compact: up to 10^4 points
    (out / FILE).write_text(json.dumps(doc, indent=1))


def read(folder: str | Path | None) -> InspectOutput | None:
    """The inspect stage's output in `folder`, or None when `folder` is None or has no inspect.json.

    Raises:
      UserError: inspect.json or map.json is unreadable, missing a field, or of another shape.
    """
    if folder is None or not (Path(folder) / FILE).is_file():
        return None
    doc = _load(Path(folder) / FILE)
    if not isinstance(doc, dict):
        raise _malformed(Path(folder) / FILE, "it should hold a JSON object")
    points = _load(Path(folder) / MAP_FILE)
    return _parse(InspectOutput, {**doc, "points": points}, Path(folder) / FILE)


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise _malformed(path, "it is missing") from None
    except (OSError, ValueError) as e:
        raise _malformed(path, f"it cannot be read as JSON ({e})") from None


def _malformed(path: Path, why: str) -> UserError:
    return damaged_output(path, "inspect", why)


def _parse(cls: type, raw: Any, path: Path) -> Any:
    """`raw` (parsed JSON) as `cls`, every field checked against its annotation."""
    try:
        value = _check(cls, raw, "")
    except ValueError as e:
        raise _malformed(path.with_name(MAP_FILE) if str(e).startswith("points") else path, str(e)) from None
    p = value.points
    n = len(p.ids)
    short = [k for k in ("split", "true", "pred", "p", "xy", "pos") if len(getattr(p, k)) != n]
    if short:
        raise _malformed(path.with_name(MAP_FILE), f"{', '.join(short)} should hold {n} points, one per id")
    if any(not 0 <= c < len(p.classes) for c in p.true + p.pred):
        raise _malformed(path.with_name(MAP_FILE), "a class index in true/pred is not one of its classes")
    return value


def _check(kind: Any, v: Any, where: str) -> Any:
    """`v` as `kind` (a dataclass, str/int/float, list[...], dict[str, ...], a Literal or an
    Optional), or ValueError saying where it differs."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(v, dict):
            raise ValueError(f"{where or 'the file'} should be an object")
        hints = typing.get_type_hints(kind)
        names = [f.name for f in dataclasses.fields(kind)]
        missing, extra = [n for n in names if n not in v], sorted(set(v) - set(names))
        if missing or extra:
            said = [f"{what} {', '.join(ks)}" for what, ks in (("missing", missing), ("unknown", extra)) if ks]
            raise ValueError(f"{where or 'the file'}: {'; '.join(said)}")
        return kind(**{n: _check(hints[n], v[n], f"{where}.{n}".lstrip(".")) for n in names})
    if origin in (Union, types.UnionType):
        for a in args:
            try:
                return _check(a, v, where)
            except ValueError:
                pass
        raise ValueError(f"{where}: {v!r:.40} is not {' or '.join(_name(a) for a in args)}")
    if origin is Literal:
        if v not in args:
            raise ValueError(f"{where}: {v!r:.40} is not one of {', '.join(map(repr, args))}")
        return v
    if origin is list:
        if not isinstance(v, list):
            raise ValueError(f"{where} should be a list")
        return [_check(args[0], x, f"{where}[{i}]") for i, x in enumerate(v)]
    if origin is dict:
        if not isinstance(v, dict):
            raise ValueError(f"{where} should be an object")
        return {k: _check(args[1], x, f"{where}.{k}") for k, x in v.items()}
    ok = (v is None if kind is type(None) else
          isinstance(v, (int, float)) and not isinstance(v, bool) if kind is float else
          isinstance(v, int) and not isinstance(v, bool) if kind is int else isinstance(v, kind))
    if not ok:
        raise ValueError(f"{where}: {v!r:.40} is not {_name(kind)}")
    return v


def _name(kind: Any) -> str:
    return "null" if kind is type(None) else getattr(kind, "__name__", str(kind))
