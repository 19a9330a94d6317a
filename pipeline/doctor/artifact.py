"""The doctor stage's output: `Findings`, its one writer (`write`) and its one reader (`read`).

  doctor.json   every field of `Findings` (what `pipeline.doctor.examine.examine` found)
  drops.json    `Findings.drops` alone: the part the heads stage reads (`pipeline.doctor.drops`),
                so that the heads' key can follow it without the rest of the report
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

from pipeline.doctor import drops as drop_list
from pipeline.plain import read_output_json

FILE = "doctor.json"


@dataclasses.dataclass(frozen=True)
class Findings:
    """What the doctor found in one run.

    Attributes:
      classes: class names, index = label.
      images: split -> images examined.
      params: the doctor params the findings depend on (threshold, pixel_threshold, center, action).
      counts: leak_groups, leaked_images, duplicate_groups, exact_groups, unconfirmed_pairs,
        label_issues, outliers, dropped, would_drop {action: images}.
      groups: near-duplicate groups, each {members, keep, leaked, cross_split, exact, identical,
        labels_differ}; a member is {split, id, label}.
      unconfirmed: similar-feature pairs the thumbnail check did not confirm {a, b, cosine, pixel}.
      label_issues: images ranked by the out-of-fold probability of their label {split, id, label,
        p_given, suggested, p_suggested, issue}.
      outliers: flagged images {split, id, label, score, z}.
      drops: the drop list (`pipeline.doctor.drops.plan`).
      unreadable: images that could not be read back for the pixel check.
      seconds: phase -> seconds.
    """

    classes: list[str]
    images: Mapping[str, int]
    params: Mapping[str, Any]
    counts: Mapping[str, Any]
    groups: list[dict]
    unconfirmed: list[dict]
    label_issues: list[dict]
    outliers: list[dict]
    drops: Mapping[str, Any]
    unreadable: list
    seconds: Mapping[str, float]


def write(out_dir: str | Path, found: Findings) -> None:
    """Write doctor.json and drops.json."""
    out = Path(out_dir)
    (out / FILE).write_text(json.dumps(dataclasses.asdict(found), indent=1))
    (out / drop_list.FILE).write_text(json.dumps(found.drops, indent=1))


def read(folder: str | Path | None) -> Findings | None:
    """The doctor's findings, or None when `folder` is None or holds no doctor.json.

    Raises:
      UserError: doctor.json is there but is not what `write` writes (naming it and the fix).
    """
    return read_output_json(Path(folder) / FILE, "doctor", lambda raw: Findings(**raw)) if folder is not None else None
