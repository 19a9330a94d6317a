"""The heads stage's inputs: one features folder per backbone, checked, and fused into one matrix.

With several backbones (``backbone.name`` a list), each features folder holds the same images in
the same order; the heads read their columns side by side, in the order of the list, each
backbone's block optionally scaled to unit L2 norm per row (`heads.fuse`), so that no backbone
dominates the penalty by the size of its activations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.errors import UserError

SPLITS = ("train", "val", "test")


def load_features(features_dir: Path) -> dict[str, Any]:
    """classes and (features float32, labels, ids) for every split present in one folder."""
    from pipeline.features.artifact import load_split, read_classes, split_assembled

    features_dir = Path(features_dir)
    try:
        data: dict[str, Any] = {"classes": read_classes(features_dir)}
    except FileNotFoundError as e:
        raise UserError(f"{e}.") from None
    for split in SPLITS:
        if split_assembled(features_dir, split):
            x, y, ids = load_split(features_dir, split)
            data[split] = (np.asarray(x, np.float32), np.asarray(y, np.int64), list(ids))
    return data


def backbone_of(features_dir: Path) -> tuple[str, int]:
    """(backbone name, feature width) from a features folder's info.json ('?', -1 where absent)."""
    from pipeline.features.artifact import read_info

    try:
        info = read_info(features_dir)
    except FileNotFoundError:
        return "?", -1
    return info.backbone, info.feature_dim


def load_fused(folders: Sequence[Path], fuse: str) -> tuple[dict[str, Any], list[dict]]:
    """Every folder's features side by side (same images, same order); one folder as it is.

    Args:
      folders: the features folders, one per backbone, in `backbone.name` order.
      fuse: ``l2`` (each backbone's rows scaled to unit norm) or ``none``; ignored for one folder.

    Returns:
      (data as `load_features` gives it, blocks: ``[{"backbone", "dim"}, ...]`` in column order).
    """
    parts = [load_features(f) for f in folders]
    blocks = []
    for f, part in zip(folders, parts):
        name, _ = backbone_of(f)
        blocks.append({"backbone": name, "dim": int(next(part[s][0].shape[1] for s in SPLITS if s in part))})
    if len(parts) == 1:
        return parts[0], blocks
    first = parts[0]
    for f, part in zip(folders[1:], parts[1:]):
        if part["classes"] != first["classes"]:
            raise UserError(f"{f}: classes differ from those of {folders[0]}; the backbones of a "
                            "backbone.name list must see the same data (rerun features).")
        for s in SPLITS:
            if (s in part) != (s in first) or (s in part and part[s][2] != first[s][2]):
                raise UserError(f"{f}/{s}: images differ from those of {folders[0]}/{s}; the backbones "
                                "of a list must embed the same images in the same order (set the same "
                                "features.augment/reduce for all; rerun --force features).")
    data: dict[str, Any] = {"classes": first["classes"]}
    for s in SPLITS:
        if s in first:
            x = np.concatenate([normalize_block(p[s][0], fuse) for p in parts], axis=1)
            data[s] = (x, first[s][1], first[s][2])
    return data, blocks


def normalize_block(x: np.ndarray, fuse: str) -> np.ndarray:
    """One backbone's rows as fused: unit L2 norm for ``l2``, unchanged for ``none``."""
    if fuse == "none":
        return np.asarray(x, np.float32)
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def check_splits(data: dict, classes: list[str]) -> None:
    """Clear errors for a features output the heads cannot fit on."""
    for split in ("train", "val"):
        if split not in data or len(data[split][1]) == 0:
            raise UserError(f"the features output has no {split} split; the heads stage needs train "
                            "(to fit) and val (to choose C and stop the MLP). Set data.val_fraction "
                            "> 0 (or give the source a val split).")
    for split, (x, y, ids) in ((s, data[s]) for s in SPLITS if s in data):
        if len(x) != len(y) or len(y) != len(ids):
            raise UserError(f"features/{split}: {len(x)} features, {len(y)} labels, {len(ids)} ids; "
                            "rerun the features stage (--force features).")
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise UserError(f"features/{split}/labels.npy has labels outside 0..{len(classes) - 1} "
                            f"(classes.json lists {len(classes)} classes); rerun the features stage.")
    for split in ("train", "val"):
        present = np.unique(data[split][1])
        if len(present) < 2:
            raise UserError(f"the {split} split has only one class ({classes[int(present[0])]!r}); "
                            f"the heads need at least two in train and val. Check that data.path "
                            f"(or the tfds source) has two or more classes, and raise "
                            f"data.val_fraction if val is too small to hold them.")
