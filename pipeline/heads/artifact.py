"""The heads stage's output: one type, one writer (`write`), one reader (`read`).

On disk (the finetune stage's ``metrics.json`` holds its one head in the same ``classes`` /
``heads`` shape, written by `pipeline.finetune.artifact` through `heads_record` and read back
through `heads_from_record`):

  heads.json + <head>.npz    the fitted heads (`pipeline.heads.trained.save_head`; loaded as JAX
                             functions on raw features by `pipeline.heads.trained.load_head`)
  metrics.json               `HeadsMetrics`: {"classes", "heads": {name: {"hyperparameters",
                              "train"|"val"|"test": `pipeline.heads.metrics.classification_report`,
                              "vs_plain_probe": {"split", "difference", "ci95", "verdict"}}},
                              "learning_curve": [point, ...] (when shots are set), "baseline": the
                              plain probe's record (`pipeline.heads.probe.fit_plain`), "backbones", "fuse",
                              "class_weight", "standardize_param", "standardize", "seconds"}
  predictions_<head>.json    {"classes", "top_k", "predictions": [{"id", "true", "pred", "p_pred",
                              "p_true", "top": [[class, p], ...]}]} (test split; labels are names)

Nothing here imports jax at import time; the report, `show`/`compare`, `predict`, inspect and the
finetune stage read through it (the heads with the fine-tuned one added:
`pipeline.finetune.artifact.read_with_finetune`). Changing this shape bumps ``stages/heads.py``'s
version.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.plain import read_output_json

SPLITS = ("train", "val", "test")
METRICS = "metrics.json"


@dataclasses.dataclass(frozen=True)
class HeadMetrics:
    """One head's scores.

    Attributes:
      hyper: the chosen hyperparameters and how they were chosen (``selection``, the C sweep or CV table).
      splits: split -> `pipeline.heads.metrics.classification_report` (accuracy, ``ci95``, mean per-class
        accuracy, log loss, per-class precision/recall/F1, confusion matrix).
      vs_plain_probe: the paired difference to the plain probe on the judged split, or None.
    """

    hyper: Mapping[str, Any]
    splits: Mapping[str, Mapping[str, Any]]
    vs_plain_probe: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class CurvePoint:
    """One point of the learning curve (`pipeline.heads.fewshot.learning_curve`): test accuracy of
    the probe and of kNN fitted on ``shots`` images per class, mean and std over ``draws`` draws."""

    shots: int | str
    n_train: float
    draws: int
    logreg_accuracy: float
    logreg_accuracy_std: float
    logreg_mean_per_class_accuracy: float
    knn_accuracy: float
    knn_accuracy_std: float


@dataclasses.dataclass(frozen=True)
class HeadsMetrics:
    """metrics.json: every head's scores and what the stage decided on the way."""

    classes: list[str]
    heads: Mapping[str, HeadMetrics]
    learning_curve: list[CurvePoint] | None = None
    baseline: Mapping[str, Any] | None = None
    backbones: list[dict] = dataclasses.field(default_factory=list)
    fuse: str | None = None
    class_weight: str | None = None
    standardize_param: Any = None
    standardize: bool | None = None
    seconds: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def judged_split(self) -> str:
        """The split heads are compared on: test where the logreg was scored on it, else val."""
        first = self.heads.get("logreg") or next(iter(self.heads.values()), None)
        return "test" if first is not None and "test" in first.splits else "val"


@dataclasses.dataclass(frozen=True)
class FittedHead:
    """One head as `pipeline.heads.trained.save_head` stores it: kind, parameters (for raw
    features), the config its apply function is built from."""

    kind: str
    params: Mapping[str, Any]
    config: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Predictions:
    """A head's test predictions: (N, K) probabilities, (N,) labels, N ids; `top_k` classes kept."""

    probs: np.ndarray
    labels: np.ndarray
    ids: Sequence[Any]
    top_k: int


@dataclasses.dataclass(frozen=True)
class PredictionRow:
    """One test image of predictions_<head>.json, as `read_predictions` gives it.

    Attributes:
      id: the image id.
      true, pred: the true and the predicted class, as indices into the classes.
      p_pred, p_true: the head's probability of the predicted and of the true class (None where absent).
      top: the top-k classes, ``((name, p), ...)``, most probable first.
    """

    id: str
    true: int
    pred: int
    p_pred: float | None
    p_true: float | None
    top: tuple[tuple[str, float], ...] = ()


@dataclasses.dataclass(frozen=True)
class HeadsOutput:
    """Everything the heads stage writes."""

    metrics: HeadsMetrics
    heads: Mapping[str, FittedHead]
    predictions: Mapping[str, Predictions]


def write(out_dir: Path, output: HeadsOutput) -> None:
    """Write the fitted heads, predictions_<head>.json and metrics.json into `out_dir`."""
    from pipeline.heads.trained import save_head

    out, classes = Path(out_dir), list(output.metrics.classes)
    for name, head in output.heads.items():
        save_head(out, name, head.kind, head.params, dict(head.config), classes)
    for name, pred in output.predictions.items():
        write_predictions(out / f"predictions_{name}.json", pred.probs, pred.labels, pred.ids, classes, pred.top_k)
    write_metrics(out, output.metrics)


def write_metrics(out_dir: Path, m: HeadsMetrics) -> None:
    """metrics.json alone (NaN and infinities as null: they are not JSON)."""
    raw: dict[str, Any] = {"classes": list(m.classes), "class_weight": m.class_weight,
                           "standardize_param": m.standardize_param, "backbones": list(m.backbones),
                           "fuse": m.fuse, "heads": heads_record(m.heads)}
    if m.standardize is not None:
        raw["standardize"] = m.standardize
    if m.baseline is not None:
        raw["baseline"] = dict(m.baseline)
    if m.learning_curve is not None:
        raw["learning_curve"] = [dataclasses.asdict(point) for point in m.learning_curve]
    raw["seconds"] = dict(m.seconds)
    write_json(Path(out_dir) / METRICS, raw)


def heads_record(heads: Mapping[str, HeadMetrics]) -> dict[str, Any]:
    """The ``heads`` entry of a metrics.json (this stage's, and the finetune stage's one head):
    name -> ``{"hyperparameters", "train"|"val"|"test", "vs_plain_probe" (when set)}``."""
    out: dict[str, Any] = {}
    for name, h in heads.items():
        out[name] = {"hyperparameters": dict(h.hyper), **{s: h.splits[s] for s in SPLITS if s in h.splits}}
        if h.vs_plain_probe is not None:
            out[name]["vs_plain_probe"] = dict(h.vs_plain_probe)
    return out


def heads_from_record(raw: Mapping[str, Any]) -> dict[str, HeadMetrics]:
    """`heads_record` read back."""
    return {str(name): HeadMetrics(hyper=h.get("hyperparameters") or {},
                                   splits={s: h[s] for s in SPLITS if isinstance(h.get(s), dict)},
                                   vs_plain_probe=h.get("vs_plain_probe"))
            for name, h in raw.items()}


def _curve(raw: Any) -> list[CurvePoint] | None:
    return [CurvePoint(**point) for point in raw] if isinstance(raw, list) else None


def write_json(path: Path, raw: Any) -> None:
    """A metrics file, indented, NaN and infinities as null."""
    Path(path).write_text(json.dumps(_finite(raw), indent=1))


def read(folder: Path | None) -> HeadsMetrics | None:
    """metrics.json of a heads output, or None when `folder` is None or holds none.

    Raises:
      UserError: the file is there but is not what `write_metrics` writes (naming it and the fix).
    """
    return read_output_json(Path(folder) / METRICS, "heads", _parse_metrics) if folder is not None else None


def _parse_metrics(raw: dict[str, Any]) -> HeadsMetrics:
    # Keys the writer always writes are indexed; the optional ones (baseline, curve, standardize) read with get.
    return HeadsMetrics(classes=list(raw["classes"]), heads=heads_from_record(raw["heads"]),
                        learning_curve=_curve(raw.get("learning_curve")), baseline=raw.get("baseline"),
                        backbones=list(raw["backbones"]), fuse=raw["fuse"], class_weight=raw["class_weight"],
                        standardize_param=raw["standardize_param"], standardize=raw.get("standardize"),
                        seconds=dict(raw["seconds"]))


def write_predictions(path: Path, probs: np.ndarray, y: np.ndarray, ids: Sequence[Any], classes: list[str],
                      top_k: int) -> None:
    """predictions_<head>.json: per test image, id, true and predicted class, their probabilities,
    the top-k classes."""
    k = min(top_k, len(classes))
    top = np.argsort(-probs, axis=1)[:, :k]
    pred = top[:, 0]
    rows = [{"id": ids[i], "true": classes[y[i]], "pred": classes[pred[i]],
             "p_pred": round(float(probs[i, pred[i]]), 6), "p_true": round(float(probs[i, y[i]]), 6),
             "top": [[classes[j], round(float(probs[i, j]), 6)] for j in top[i]]}
            for i in range(len(y))]
    # One prediction per line, each dumped by json's C encoder (`indent` falls back to the
    # much slower pure-Python one).
    head = json.dumps({"classes": classes, "top_k": k})[:-1]
    body = ",\n".join(json.dumps(r) for r in rows)
    path.write_text(f'{head}, "predictions": [\n{body}\n]}}\n')


def read_predictions(heads_dir: Path | None, head: str) -> list[PredictionRow] | None:
    """predictions_<head>.json as `PredictionRow`s (labels as indices into its ``classes``), or None
    when `heads_dir` is None or holds no such file.

    Raises:
      UserError: the file is there but is not what `write_predictions` writes.
    """
    if heads_dir is None:
        return None
    return read_output_json(Path(heads_dir) / f"predictions_{head}.json", "heads", _parse_predictions)


def _parse_predictions(raw: dict[str, Any]) -> list[PredictionRow]:
    index = {c: i for i, c in enumerate(raw["classes"])}
    return [PredictionRow(id=str(r["id"]), true=index[r["true"]], pred=index[r["pred"]], p_pred=r["p_pred"],
                          p_true=r["p_true"], top=tuple((str(c), p) for c, p in r["top"]))
            for r in raw["predictions"]]


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
