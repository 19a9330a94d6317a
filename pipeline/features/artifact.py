"""What the features stage writes, and its one reader (`load_split`).

  classes.json           class names (index = label)
  info.json              {"backbone", "feature_dim", "dtype", "splits": {split: rows}, "views", ...}
  <split>/features.npy   (N, D) float32 or float16 (N x views rows with ``reduce: rows``)
  <split>/labels.npy     (N,) int32
  <split>/ids.json       N image ids (``<id>#<view>`` with ``reduce: rows`` and several views)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


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
