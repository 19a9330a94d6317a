"""What the doctor's action removes, and how a downstream stage (heads) applies it.

The doctor writes ``drops.json``: ``{"action", "ids": {split: [image id, ...]}, "reasons": {split:
{id: reason}}}``. With ``doctor.action: report`` the lists are empty, so a stage that reads them
gets the same output whatever the doctor's other params are; that is why the doctor tells the
engine (`Stage.downstream_key`) that its output, as downstream stages read it, depends on its
params only when an action is on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

FILE = "drops.json"
_VIEW = re.compile(r"#\d+$")  # features with reduce: rows name rows "<id>#<view>"


def plan(action: str, split_of: Sequence[str], ids: Sequence[str],
         leaked_rows: Mapping[int, str], redundant_rows: Mapping[int, str], label_rows: Mapping[int, str],
         outlier_rows: Mapping[int, str]) -> dict[str, Any]:
    """The drop list for an action, as written to ``drops.json``.

    ``drop_leaks`` removes the held-out copies of cross-split duplicates. ``drop_all`` also
    removes the extra copies of within-split duplicates and, from train and val only, likely
    label errors and outliers: test keeps them, so the test figures are still measured on
    every image that is not a copy of a training image.
    """
    chosen: dict[int, str] = {}
    if action in ("drop_leaks", "drop_all"):
        chosen.update(leaked_rows)
    if action == "drop_all":
        for rows in (redundant_rows, label_rows, outlier_rows):
            for r, why in rows.items():
                if r not in chosen and (rows is redundant_rows or split_of[r] != "test"):
                    chosen[r] = why
    out: dict[str, Any] = {"action": action, "ids": {}, "reasons": {}}
    for r in sorted(chosen):
        s = split_of[r]
        out["ids"].setdefault(s, []).append(ids[r])
        out["reasons"].setdefault(s, {})[ids[r]] = chosen[r]
    return out


def load(doctor_dir: str | Path | None) -> dict[str, set[str]]:
    """split -> ids to drop, from a doctor output folder (empty for None or no drops)."""
    if doctor_dir is None:
        return {}
    path = Path(doctor_dir) / FILE
    if not path.exists():
        from pipeline.errors import UserError

        raise UserError(f"{path} not found: {doctor_dir} is not a doctor stage output; rerun with "
                        "--force doctor.")
    return {s: set(v) for s, v in json.loads(path.read_text()).get("ids", {}).items()}


def keep_mask(ids: Sequence[str], dropped: set[str]) -> np.ndarray:
    """(N,) True for the rows to keep (a row ``<id>#<view>`` goes with its image)."""
    return np.array([i not in dropped and _VIEW.sub("", i) not in dropped for i in ids], bool)


def apply(doctor_dir: str | Path | None, data: dict[str, Any], log: Callable[[str], None] = lambda m: None
          ) -> dict[str, Any]:
    """Remove the doctor's drops from loaded features: ``data[split] = (x, y, ids, ...)``.

    Args:
      doctor_dir: the doctor stage's output folder, or None (no doctor: nothing changes).
      data: split name -> tuple whose first items are features (N, D), labels (N,), ids (N);
        other keys (``"classes"``) pass through.
      log: gets one line saying how many rows each split lost.

    Returns:
      A new dict with the dropped rows removed from every array of each split's tuple.
    """
    dropped = load(doctor_dir)
    if not any(dropped.values()):
        return data
    out = dict(data)
    lines = []
    for split, drop in dropped.items():
        if split not in data or not drop:
            continue
        x, y, ids, *rest = data[split]
        keep = keep_mask(list(ids), drop)
        out[split] = (x[keep], y[keep], [i for i, k in zip(ids, keep) if k],
                      *(r[keep] if isinstance(r, np.ndarray) else r for r in rest))
        lines.append(f"{split} -{int((~keep).sum())}")
    if lines:
        log(f"doctor drops ({Path(doctor_dir) / FILE}): {', '.join(lines)} rows")
    return out
