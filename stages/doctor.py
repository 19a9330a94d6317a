"""Stage `doctor`: what is wrong with the photos, found from the cached features in seconds.

Reads the features (and, for content hashes and the thumbnail check, the data stage's images) and
writes ``doctor.json`` (every finding), ``drops.json`` (what `doctor.action` removes before the
heads see the features; empty with ``report``) and prints a one-screen summary:

- near-duplicates within a split and across splits (train/test leakage), by cosine similarity of
  the features, confirmed on small thumbnails; exact duplicates by content hash;
- likely label errors: confident learning on out-of-fold logreg probabilities;
- outliers / off-domain photos: large kNN distance in feature space.

The machinery is `pipeline.doctor`; this module holds the params and the stage declaration.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Mapping

from pipeline.params import ParamsError, spec
from pipeline.stage import Stage, StageContext


@dataclasses.dataclass(frozen=True)
class DoctorLabelParams:
    """``doctor.labels``: out-of-fold logreg + confident learning."""

    enabled: bool = spec(True, help="look for likely label errors")
    folds: int = spec(5, min=2, max=50, help="cross-validation folds of the out-of-fold probabilities")
    C: float = spec(0.1, min=0, min_exclusive=True, help="inverse L2 strength of the fold logregs (scikit-learn's C)")
    seed: int = spec(0, min=0, help="seed of the fold assignment")
    steps: int = spec(300, min=1, max=10000, help="accelerated-gradient steps per fold logreg")
    max_dim: int = spec(256, min=2, help="principal axes the fold logregs see (exact when images <= this)")
    ranked: int = spec(50, min=0, help="also list this many lowest-confidence images beyond the flagged ones")


@dataclasses.dataclass(frozen=True)
class DoctorOutlierParams:
    """``doctor.outliers``: kNN distance in feature space."""

    k: int = spec(5, min=1, max=100, help="neighbours averaged for the kNN distance")
    distance: float = spec(0.65, min=0.0, max=2.0,
                           help="flag images whose kNN cosine distance (raw features) is at least this (calibrated for efficientnet_lite0)")
    z: float = spec(2.0, min=0.0,
                    help="... and at least this many robust standard deviations above the set's median distance")


@dataclasses.dataclass(frozen=True)
class DoctorParams:
    """``doctor``: what the data doctor looks for, and what it does about it."""

    action: Literal["report", "drop_leaks", "drop_all"] = spec(
        "report", help="report only; drop_leaks: remove val/test copies of training images before the heads; "
                       "drop_all: also extra duplicate copies, and likely label errors and outliers from train/val")
    threshold: float = spec(0.8, min=-1.0, max=1.0,
                            help="cosine similarity of the features at or above which two images are near-duplicate candidates (calibrated for efficientnet_lite0: tools/calibrate_doctor.py)")
    center: bool = spec(False, help="subtract the mean feature before the cosine of the duplicate search (the default threshold is for raw features)")
    pixel_check: bool = spec(True, help="confirm candidates on small grey thumbnails (unconfirmed ones are listed for review); off: every candidate counts, so raise threshold")
    pixel_threshold: float = spec(0.95, min=-1.0, max=1.0, help="thumbnail correlation that confirms a candidate pair")
    pixel_size: int = spec(16, min=4, max=128, help="side of the compared grey thumbnails, pixels")
    exact: bool = spec(True, help="hash every image's bytes to find exact duplicates")
    neighbors: int = spec(10, min=1, max=1000, help="nearest neighbours kept per image")
    block: int = spec(0, min=0, affects_output=False, help="rows per block of the similarity search (memory ~ block^2 floats); 0: 512 on CPU, 4096 on GPU/TPU")
    search_dtype: Literal["auto", "float32", "bfloat16"] = spec(
        "auto", affects_output=False, help="matmul dtype of the search (auto: bfloat16 on GPU/TPU); results are rescored in float32")
    labels: DoctorLabelParams = spec(default_factory=DoctorLabelParams)
    outliers: DoctorOutlierParams = spec(default_factory=DoctorOutlierParams)

    def validate(self) -> None:
        if self.neighbors < self.outliers.k:
            raise ParamsError(f"neighbors: {self.neighbors} is below outliers.k {self.outliers.k}; "
                              "keep at least as many neighbours as the outlier score averages.")


def run(ctx: StageContext) -> dict[str, Any]:
    """Examine the features; write doctor.json and drops.json; log the summary.

    Returns:
      The headline counts (leaks, duplicates, label issues, outliers, dropped).
    """
    from pipeline.doctor import artifact, examine, summary
    from pipeline.features.artifact import read_classes

    p: DoctorParams = ctx.params["doctor"]
    feats = Path(ctx.inputs["features"])
    try:
        read_classes(feats)
    except FileNotFoundError as e:
        from pipeline.errors import UserError

        raise UserError(f"{e}; rerun --force features.") from None
    found = artifact.Findings(**examine.examine(feats, ctx.inputs.get("data"), p, log=ctx.log))
    artifact.write(ctx.out_dir, found)
    ctx.log("\n" + summary.text(found))
    c = found.counts
    return {"leaked_images": c["leaked_images"], "leak_groups": c["leak_groups"],
            "duplicate_groups": c["duplicate_groups"], "label_issues": c["label_issues"],
            "outliers": c["outliers"], "dropped": c["dropped"], "action": p.action}


def downstream_key(sections: Mapping[str, Any]) -> str | None:
    """What downstream keys hash for this stage: nothing of its params in ``report`` mode.

    With ``action: report`` the drop list is empty whatever the other params are, so heads (the
    only stage that reads it) needs no rerun when a doctor param changes; with an action on, the
    drop list depends on every doctor param and downstream keys take the doctor's own key.
    """
    return "no-drops" if sections["doctor"].action == "report" else None


STAGE = Stage(
    name="doctor",
    run=run,
    deps=("data", "features"),
    sections=("doctor",),
    version="1",
    schemas={"doctor": DoctorParams},
    downstream_key=downstream_key,
    description="near-duplicates and train/test leaks, likely label errors, outliers, from the features",
)
