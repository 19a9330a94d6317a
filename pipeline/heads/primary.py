"""Which head is the answer: the rule the report, `predict --head best` and inspect all follow.

The heads are compared as `pipeline.heads.artifact.HeadsMetrics` (the heads stage's
`pipeline.heads.artifact.read`, or with the fine-tuned head added,
`pipeline.finetune.artifact.read_with_finetune`): each head's ``hyper`` and ``splits``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from pipeline.heads.artifact import HeadsMetrics

Log = Callable[[str], None]


def pick_split(splits: Mapping[str, Any], wanted: str) -> str:
    """`wanted` when the head has that split, else the first of test, val, validation, train."""
    if wanted in splits:
        return wanted
    for s in ("test", "val", "validation", "train"):
        if s in splits:
            return s
    return next(iter(splits), wanted)


def choose_primary(metrics: HeadsMetrics | None, wanted: str, log: Log = lambda m: None) -> str | None:
    """The head whose plots are shown: the one named, else the best by `selection_scores`.

    Args:
      metrics: the heads to choose from, or None (no heads output).
      wanted: a head name, or ``auto`` (``report.primary_head``).
      log: where a warning goes when `wanted` names no head of `metrics`.

    Returns:
      The head's name, or None when there is no head.
    """
    if metrics is None or not metrics.heads:
        return None
    names = list(metrics.heads)
    if wanted != "auto" and wanted in names:
        return wanted
    if wanted != "auto":
        log(f"warning: report.primary_head {wanted!r} is not a head of this run ({', '.join(names)}); "
            "showing the best by its selection score instead")
    scores, _ = selection_scores(metrics)
    best = names[0]
    for name in names[1:]:  # heads are listed simplest first: logreg, mlp, finetune
        if scores[name] > scores[best] + selection_margin(metrics, best):
            best = name
    return best


def selection_margin(metrics: HeadsMetrics, leader: str) -> float:
    """How far a later (more complex) head must beat `leader`'s selection accuracy to replace it.

    One binomial standard error of the leader's score over the images it counts
    (``selection.n``). The MLP picks its epoch count as the best of dozens of CV scores (epoch 0,
    the probe itself, among them), so its score is the larger of many noisy numbers and ties or
    beats the probe's by construction; a win inside the noise is not evidence (on the five tuning
    sets, the MLP chosen by the plain maximum lost to the probe on test on every set: see
    docs/accuracy.md). Without a count (older outputs), any strict win counts.
    """
    sel = metrics.heads[leader].hyper.get("selection") or {}
    n, a = sel.get("n"), sel.get("accuracy")
    if not isinstance(n, int) or n <= 0 or not isinstance(a, (int, float)):
        return 0.0
    return math.sqrt(max(a * (1 - a), 0.0) / n)


def selection_scores(metrics: HeadsMetrics) -> tuple[dict[str, float], str]:
    """(head -> the score heads are compared on, what that score is).

    Where every head records the score its own hyperparameters were chosen on, by the same means
    (``hyper["selection"]``: CV accuracy, or val accuracy before any refit), that score:
    after a refit on train+val, a head's val accuracy is an accuracy on its own training images.
    Otherwise the val split's mean per-class accuracy (the test split's when there is no val).
    """
    sel = {n: h.hyper.get("selection") for n, h in metrics.heads.items()}
    usable = all(isinstance(v, Mapping) and isinstance(v.get("accuracy"), (int, float))
                 and math.isfinite(v["accuracy"]) for v in sel.values())
    if usable and len({v.get("by") for v in sel.values()}) == 1:
        by = next(iter(sel.values())).get("by")
        return {n: float(v["accuracy"]) for n, v in sel.items()}, (
            "the best by cross-validated accuracy" if by == "cv" else "the best on val")

    def score(n: str) -> float:
        splits = metrics.heads[n].splits
        m = splits.get("val") or splits.get("validation") or splits.get(pick_split(splits, "test")) or {}
        return float(m.get("mean_per_class_accuracy", m.get("accuracy", -1.0)))

    return {n: score(n) for n in metrics.heads}, "the best on val"
