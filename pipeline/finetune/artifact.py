"""The trunk and finetune stages' outputs: their types, one writer and one reader each.

Trunk (the contract with `finetune`):
  info.json                  `TrunkInfo` ({"enabled": false} alone when fine-tuning is off)
  classes.json               class names
  <split>/activations.npy    (N * r, h * w * c) float16/float32, rows image-major (r = 1 + views for
                             train, 1 otherwise); `load_split` memory-maps and reshapes it
  <split>/labels.npy         (N,) int32, one per image
  <split>/ids.json           N image ids

Finetune (besides metrics.json and predictions_finetune.json, read as a head by
`pipeline.heads.artifact`):
  finetune.npz               trained params (``top/...``, ``head/W``, ``head/b``)
  finetune.json              `Finetuned`: what `pipeline.finetune.model.load_finetuned` rebuilds it from
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Mapping

import numpy as np

from pipeline import shards

TRUNK_INFO = "info.json"
FINETUNED = "finetune.json"


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


def read_trunk_classes(trunk_dir: str | Path) -> list[str]:
    """The class names the trunk's labels index."""
    return list(json.loads((Path(trunk_dir) / "classes.json").read_text()))


def load_split(trunk_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(activations (N, r, h, w, c) memory-mapped read-only, labels (N,), ids) of one split."""
    info = read_trunk_info(trunk_dir)
    d = Path(trunk_dir) / split
    labels = np.load(d / "labels.npy")
    acts = np.load(d / "activations.npy", mmap_mode="r")
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
