"""The trunk and finetune stages' outputs: their types, one writer and one reader each.

Trunk (the contract with `finetune`):
  info.json                  `TrunkInfo` ({"enabled": false} alone when fine-tuning is off)
  classes.json               class names
  <split>/activations.npy    (N * r, h * w * c) float16/float32, rows image-major (r = 1 + views for
                             train, 1 otherwise); `load_split` memory-maps and reshapes it
  <split>/labels.npy         (N,) int32, one per image
  <split>/ids.json           N image ids, written last: a split is whole once it exists
                             (`write_split_labels_ids`, `split_assembled`)

Finetune:
  metrics.json               `FinetuneMetrics`: {"classes", "heads": {"finetune": {"hyperparameters",
                             "train"|"val"|"test"}} (the heads stage's shape, through
                             `pipeline.heads.artifact.heads_record`), "probe", "start",
                             "best_train_loss", "history", "seconds", "best_probe" (when there is one)};
                             ``{"enabled": false}`` when fine-tuning is off (`read_metrics` gives None)
  predictions_finetune.json  as the heads stage's (`pipeline.heads.artifact.read_predictions`)
  finetune.npz               trained params (``top/...``, ``head/W``, ``head/b``)
  finetune.json              `Finetuned`: what `pipeline.finetune.model.load_finetuned` rebuilds it from

`read_with_finetune` gives the heads stage's metrics with the fine-tuned classifier as one more
head: how the report, ``show``/``compare`` and the run's flat metrics compare the heads.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pipeline import shards
from pipeline.heads.artifact import HeadsMetrics, heads_from_record, heads_record, read, write_json
from pipeline.plain import read_output_json

TRUNK_INFO = "info.json"
FINETUNED = "finetune.json"
METRICS = "metrics.json"


@dataclasses.dataclass(frozen=True)
class TrunkInfo:
    """What the trunk stage cached (every field but `enabled` is empty when it is off).

    Attributes:
      enabled: ``finetune.enabled``.
      backbone: the backbone cut.
      cut: the first trainable layer (``finetune.unfreeze``).
      activation_shape: (h, w, c) of the activations at the cut.
      dtype: storage dtype of the activations.
      views: augmented views per training image, besides its centre view.
      images: split -> images.
      rows_per_image: split -> rows per image (1 + views for train, 1 otherwise).
    """

    enabled: bool
    backbone: str = ""
    cut: str = ""
    activation_shape: tuple[int, ...] = ()
    dtype: str = ""
    views: int = 0
    images: Mapping[str, int] = dataclasses.field(default_factory=dict)
    rows_per_image: Mapping[str, int] = dataclasses.field(default_factory=dict)


def write_trunk_info(out_dir: str | Path, info: TrunkInfo) -> None:
    """Write info.json (durably: the trunk's finalize may be killed and resumed)."""
    raw = {**dataclasses.asdict(info), "activation_shape": list(info.activation_shape)}
    shards.write_durable_json(Path(out_dir) / TRUNK_INFO, raw if info.enabled else {"enabled": False})


def read_trunk_info(trunk_dir: str | Path) -> TrunkInfo:
    """The trunk stage's info.json."""
    raw = json.loads((Path(trunk_dir) / TRUNK_INFO).read_text())
    return TrunkInfo(**{**raw, "activation_shape": tuple(raw.get("activation_shape", ()))})


def write_trunk_classes(out_dir: str | Path, classes: list[str]) -> None:
    """Write the trunk's classes.json durably (index = label)."""
    shards.write_durable_json(Path(out_dir) / "classes.json", list(classes))


def read_trunk_classes(trunk_dir: str | Path) -> list[str]:
    """The class names the trunk's labels index."""
    return list(json.loads((Path(trunk_dir) / "classes.json").read_text()))


def activations_path(out_dir: str | Path, split: str) -> Path:
    """Where a split's activations go (the stage assembles its shards there)."""
    return Path(out_dir) / split / "activations.npy"


def write_split_labels_ids(out_dir: str | Path, split: str, labels: np.ndarray, ids: list[str]) -> None:
    """Write a split's labels.npy, then its ids.json: the last durable write of a split, which marks
    it assembled (`split_assembled`); its activations.npy must already be in place."""
    shards.write_split_tail(Path(out_dir) / split, labels, ids)


def split_assembled(trunk_dir: str | Path, split: str) -> bool:
    """Whether a split's files are all written (its ids.json, written last, exists)."""
    return shards.split_written(Path(trunk_dir) / split)


def load_split(trunk_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(activations (N, r, h, w, c) memory-mapped read-only, labels (N,), ids) of one split."""
    info = read_trunk_info(trunk_dir)
    d = Path(trunk_dir) / split
    labels = np.load(d / "labels.npy")
    acts = np.load(activations_path(trunk_dir, split), mmap_mode="r")
    r = info.rows_per_image[split]
    return acts.reshape(len(labels), r, *info.activation_shape), labels, json.loads((d / "ids.json").read_text())


@dataclasses.dataclass(frozen=True)
class Finetuned:
    """What finetune.json records of the fine-tuned classifier."""

    backbone: str
    cut: str
    classes: list[str]
    top_keys: list[str]


def write_finetuned(out_dir: str | Path, meta: Finetuned) -> None:
    """Write finetune.json (finetune.npz is written beside it by the stage)."""
    (Path(out_dir) / FINETUNED).write_text(json.dumps(dataclasses.asdict(meta), indent=1))


def read_finetuned(finetune_dir: str | Path) -> Finetuned:
    """The finetune stage's finetune.json."""
    return Finetuned(**json.loads((Path(finetune_dir) / FINETUNED).read_text()))


@dataclasses.dataclass(frozen=True)
class FinetuneMetrics:
    """The finetune stage's metrics.json: the fine-tuned classifier as a head, and its training.

    Attributes:
      heads: the classes and ``heads["finetune"]`` (hyperparameters, per-split reports), as the heads
        stage writes its heads (its other fields are unused here).
      probe: split -> ``{"accuracy"}`` of the starting probe on the pretrained top (empty with init zeros).
      start: the losses and accuracies before the first epoch.
      best_train_loss: the train loss of the kept epoch.
      history: one record per epoch (`pipeline.finetune.train.fit`).
      seconds: ``{"train", "evaluate", "total"}``.
      best_probe: ``{"head", "split", "accuracy", "gain"}``: the heads stage's most accurate head, what
        fine-tuning must beat, or None.
    """

    heads: HeadsMetrics
    probe: Mapping[str, Mapping[str, float]]
    start: Mapping[str, Any]
    best_train_loss: float | None
    history: list[dict]
    seconds: Mapping[str, float]
    best_probe: Mapping[str, Any] | None = None


def write_metrics(out_dir: str | Path, m: FinetuneMetrics | None) -> None:
    """Write metrics.json; None writes the disabled stage's ``{"enabled": false}``."""
    if m is None:
        write_json(Path(out_dir) / METRICS, {"enabled": False})
        return
    raw: dict[str, Any] = {"classes": list(m.heads.classes), "heads": heads_record(m.heads.heads),
                           "probe": dict(m.probe), "start": dict(m.start), "best_train_loss": m.best_train_loss,
                           "history": list(m.history), "seconds": dict(m.seconds)}
    if m.best_probe is not None:
        raw["best_probe"] = dict(m.best_probe)
    write_json(Path(out_dir) / METRICS, raw)


def read_metrics(finetune_dir: str | Path | None) -> FinetuneMetrics | None:
    """The finetune stage's metrics.json, or None when absent or fine-tuning was off (the stub).

    Raises:
      UserError: the file is there but is neither the stub nor what `write_metrics` writes.
    """
    if finetune_dir is None:
        return None
    return read_output_json(Path(finetune_dir) / METRICS, "finetune", _parse_metrics)


def _parse_metrics(raw: dict[str, Any]) -> FinetuneMetrics | None:
    if raw == {"enabled": False}:
        return None
    return FinetuneMetrics(heads=HeadsMetrics(classes=list(raw["classes"]), heads=heads_from_record(raw["heads"])),
                           probe=raw["probe"], start=raw["start"], best_train_loss=raw.get("best_train_loss"),
                           history=raw["history"], seconds=raw["seconds"], best_probe=raw.get("best_probe"))


def read_with_finetune(heads_dir: str | Path | None, finetune_dir: str | Path | None = None) -> HeadsMetrics | None:
    """The heads stage's metrics with the fine-tuned classifier as one more head (when `finetune_dir`
    holds one), or None when the heads output is absent."""
    m = read(heads_dir)
    ft = read_metrics(finetune_dir)
    if m is None or ft is None:
        return m
    return dataclasses.replace(m, heads={**m.heads, **ft.heads.heads})
