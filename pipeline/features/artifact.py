"""What the features stage writes, its writers, and its readers (`load_split`, `read_info`, `read_classes`).

  classes.json           class names (index = label)
  info.json              `FeaturesInfo`: backbone, width, dtype, rows and images per split, views
  <split>/features.npy   (N, D) float32 or float16 (N x views rows with ``reduce: rows``)
  <split>/labels.npy     (N,) int32
  <split>/ids.json       N image ids (``<id>#<view>`` with ``reduce: rows`` and several views)

A split is whole once its ids.json exists (`split_assembled`): the stage's finalize writes it last
(`write_split_labels_ids`), so a finalize killed mid-split leaves that split to be assembled again.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

INFO = "info.json"
CLASSES = "classes.json"


@dataclasses.dataclass(frozen=True)
class FeaturesInfo:
    """``info.json``: what the features in a folder are.

    Attributes:
      backbone: the registered backbone that computed them.
      feature_dim: width D of each row.
      dtype: storage dtype (``float32`` or ``float16``).
      splits: rows per split (images x views with ``reduce: rows``).
      images: images per split.
      views: test-time views per image (1 without augmentation).
      augment, reduce: the ``features`` params that made the views and combined them.
      input_size: side of the crop the backbone saw (``features.image_size`` or its native size).
    """

    backbone: str
    feature_dim: int
    dtype: str
    splits: dict[str, int]
    images: dict[str, int] = dataclasses.field(default_factory=dict)
    views: int = 1
    augment: str = "none"
    reduce: str = "mean"
    input_size: int | None = None


def write_info(out_dir: str | os.PathLike, info: FeaturesInfo) -> None:
    """Write info.json durably (the stage's finalize may be killed and rerun)."""
    from pipeline import shards

    shards.write_durable_json(Path(out_dir) / INFO, dataclasses.asdict(info))


def read_info(features_dir: str | os.PathLike) -> FeaturesInfo:
    """The features folder's info.json.

    Raises:
      FileNotFoundError: the folder has no info.json.
    """
    raw = json.loads((Path(features_dir) / INFO).read_text())
    known = {f.name for f in dataclasses.fields(FeaturesInfo)}
    return FeaturesInfo(**{k: v for k, v in raw.items() if k in known})


def write_classes(out_dir: str | os.PathLike, classes: list[str]) -> None:
    """Write classes.json durably (index = label)."""
    from pipeline import shards

    shards.write_durable_json(Path(out_dir) / CLASSES, list(classes))


def read_classes(features_dir: str | os.PathLike) -> list[str]:
    """The class names the features' labels index.

    Raises:
      FileNotFoundError: no classes.json: `features_dir` is not a features stage output.
    """
    path = Path(features_dir) / CLASSES
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {features_dir} is not a features stage output")
    return list(json.loads(path.read_text()))


def features_path(out_dir: str | os.PathLike, split: str) -> Path:
    """Where a split's (N, D) features go (the stage assembles its shards there)."""
    return Path(out_dir) / split / "features.npy"


def write_split_labels_ids(out_dir: str | os.PathLike, split: str, labels: np.ndarray, ids: list[str]) -> None:
    """Write a split's labels.npy, then its ids.json: the last durable write of a split, which marks
    it assembled (`split_assembled`); its features.npy must already be in place."""
    from pipeline import shards

    shards.write_split_tail(Path(out_dir) / split, labels, ids)


def split_assembled(features_dir: str | os.PathLike, split: str) -> bool:
    """Whether a split's files are all written (its ids.json, written last, exists)."""
    from pipeline import shards

    return shards.split_written(Path(features_dir) / split)


def load_split(features_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One split of the features stage's output.

    Args:
      features_dir: the features stage's output folder.
      split: ``train``, ``val`` or ``test``.

    Returns:
      (features (N, D) memory-mapped read-only, labels (N,) int32, ids: N image ids).
    """
    d = Path(features_dir) / split
    feats = np.load(d / "features.npy", mmap_mode="r")
    labels = np.load(d / "labels.npy")
    ids = json.loads((d / "ids.json").read_text())
    return feats, labels, ids
