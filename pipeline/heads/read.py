"""The heads stage's output (and the finetune stage's head) read back in one shape.

What the writers put on disk (`pipeline.heads.outputs`, `stages.heads`, `stages.finetune`):

  metrics.json               {"classes": [...], "heads": {name: {"hyperparameters": {...},
                              "train"|"val"|"test": `pipeline.heads.metrics.classification_report`}},
                              "learning_curve": [point, ...] (heads stage, when shots are set),
                              "baseline": the plain probe's scores (`pipeline.heads.baseline`)}
                             each head also has "vs_plain_probe": {"split", "difference", "ci95", "verdict"}
  predictions_<head>.json    {"classes", "top_k", "predictions": [{"id", "true", "pred", "p_pred",
                              "p_true", "top": [[class, p], ...]}]} (test split; labels are names)

Nothing here imports jax; the report, `show`/`compare`, `predict` and inspect read through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pipeline.plain import load_json

SPLITS = ("train", "val", "test")


def read_heads_metrics(heads_dir: Path | None, finetune_dir: Path | None = None) -> dict | None:
    """The heads stage's metrics.json (plus the finetune stage's head, when given).

    Returns:
      ``{"classes": [...] | None, "heads": {name: {"splits": {split: metrics}, "hyper": {...}}},
      "curve": the heads stage's ``learning_curve`` or None, "baseline": the plain probe's record or
      None}`` (each head's dict also holds ``vs_plain_probe`` or None), or None when absent. Each split's
      metrics has ``accuracy``, ``n``, ``mean_per_class_accuracy``, ``log_loss``, ``per_class``
      {name: {precision, recall, f1, support}}, ``confusion_matrix`` (see `heads.metrics`).
    """
    if heads_dir is None:
        return None
    out = _read(heads_dir)
    extra = _read(finetune_dir) if finetune_dir is not None else None
    if out is not None and extra is not None:
        out["heads"].update(extra["heads"])  # the fine-tuned classifier is one more head
    return out


def _read(folder: Path) -> dict | None:
    raw = load_json(Path(folder) / "metrics.json")
    if not isinstance(raw, dict) or not isinstance(raw.get("heads"), dict):
        return None  # absent, or the finetune stage's stub when it is disabled ({"enabled": false})
    heads = {str(name): {"splits": {s: h[s] for s in SPLITS if s in h}, "hyper": h.get("hyperparameters") or {},
                         "vs_plain_probe": h.get("vs_plain_probe")}
             for name, h in raw["heads"].items()}
    return {"classes": raw.get("classes"), "heads": heads, "curve": raw.get("learning_curve"),
            "baseline": raw.get("baseline")}


def read_predictions(heads_dir: Path | None, head: str, classes: Sequence[str] | None) -> list[dict] | None:
    """predictions_<head>.json as rows ``{id, true, pred, conf, true_prob, top}`` (labels as indices).

    `classes` names the labels when the file does not; a row whose label is not a class is left out.
    """
    if heads_dir is None:
        return None
    raw = load_json(Path(heads_dir) / f"predictions_{head}.json")
    if not isinstance(raw, dict):
        return None
    index = {c: i for i, c in enumerate(raw.get("classes") or classes or [])}
    rows = []
    for r in raw.get("predictions") or []:
        true, pred = index.get(r["true"]), index.get(r["pred"])
        if true is None or pred is None:
            continue
        rows.append({"id": str(r["id"]), "true": true, "pred": pred, "conf": r.get("p_pred"),
                     "true_prob": r.get("p_true"), "top": r.get("top")})
    return rows
