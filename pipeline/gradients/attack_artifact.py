"""The adversarial stage's output: `AttackOutput`, its one writer (`write`) and its one reader (`read`).

On disk (PNG files are written by the stage, `pipeline.gradients.pictures`; the index names them
by their path relative to the output folder):

  examples/<NN>_<id>_original.png                 an attacked photo as the classifier saw it
  examples/<NN>_<id>_<method>_adversarial.png     the attacked image (uint8, what was measured)
  examples/<NN>_<id>_<method>_perturbation.png    the change, amplified to full range
  metrics.json   {"backbone", "classifier", "source", "target", "split", "images", "epsilon",
                  "clean_target_rate", "clean_mean_target_prob",
                  "methods": {method: {"success_rate", "successes", "prob_over_half_rate",
                    "mean_target_prob", "min_target_prob", "mean_linf", "max_linf", "mean_l2",
                    "mean_psnr", "min_psnr" (null when no image changed), "seconds",
                    "seconds_per_image", "linf_bound_holds" (bounded methods only), "passes",
                    "image_steps_per_second"}},
                  "transfer": {backbone: {"clean": rate, method: rate, ...}},
                  "examples": [{"id", "method", "original", "perturbation", "adversarial",
                    "original_prediction", "original_target_prob", "adversarial_prediction",
                    "adversarial_target_prob", "success", "linf", "psnr"}]}

Rates are shares of the attacked images whose top-1 is in the target group; every number is
measured on the saved uint8 images. The report and `show`/`compare` (`pipeline.results`) read it
through `read`. Changing this shape bumps ``stages/adversarial.py``'s version.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

from pipeline.plain import read_output_json

FILE = "metrics.json"
ORDER = ("pgd", "fgsm", "unbounded")  # PGD first: the attack the bounds are about


@dataclasses.dataclass(frozen=True)
class AttackMethod:
    """One method over all attacked images (distances in grey levels of 0..255, PSNR in dB)."""

    success_rate: float
    successes: int
    prob_over_half_rate: float
    mean_target_prob: float
    min_target_prob: float
    mean_linf: float
    max_linf: float
    mean_l2: float
    mean_psnr: float | None
    min_psnr: float | None
    seconds: float
    seconds_per_image: float
    linf_bound_holds: bool | None  # None: an unbounded method
    passes: int  # forward/backward passes of one batch
    image_steps_per_second: float


@dataclasses.dataclass(frozen=True)
class AttackExample:
    """One attacked photo under one method: its three PNGs and what the classifier said.

    Attributes:
      id: the photo's id; method: the attack.
      original, perturbation, adversarial: PNG paths relative to the output folder (the
        perturbation amplified to be visible).
      original_prediction, adversarial_prediction: ``"<top-1 class> (<its probability>)"``.
      original_target_prob, adversarial_target_prob: the target group's probability.
      success: the adversarial image's top-1 is in the target group.
      linf: largest change, grey levels; psnr: dB (infinite when nothing changed).
    """

    id: str
    method: str
    original: str
    perturbation: str
    adversarial: str
    original_prediction: str
    original_target_prob: float
    adversarial_prediction: str
    adversarial_target_prob: float
    success: bool
    linf: float
    psnr: float


@dataclasses.dataclass(frozen=True)
class AttackOutput:
    """metrics.json: what was attacked, each method's scores, the transfer, the examples."""

    backbone: str
    classifier: str
    source: str
    target: str
    split: str
    images: int
    epsilon: float
    clean_target_rate: float
    clean_mean_target_prob: float
    methods: Mapping[str, AttackMethod]
    transfer: Mapping[str, Mapping[str, float]]  # backbone -> {"clean" | method: success rate}
    examples: list[AttackExample]

    def headline(self) -> tuple[str, float] | None:
        """(method, success rate) of PGD when it ran, else of the first method; None without one."""
        name = next((m for m in ORDER if m in self.methods), next(iter(self.methods), None))
        return (name, self.methods[name].success_rate) if name is not None else None


def write(out_dir: str | Path, out: AttackOutput) -> None:
    """Write metrics.json (the PNGs it names are the stage's to write)."""
    doc = dataclasses.asdict(out)
    for m in doc["methods"].values():
        if m["linf_bound_holds"] is None:
            del m["linf_bound_holds"]
    (Path(out_dir) / FILE).write_text(json.dumps(doc, indent=1))


def read(folder: str | Path | None) -> AttackOutput | None:
    """The adversarial stage's output, or None when `folder` is None or holds no metrics.json.

    Raises:
      UserError: metrics.json is there but is not what `write` writes (naming the file and the fix).
    """
    return read_output_json(Path(folder) / FILE, "adversarial", _parse) if folder is not None else None


def _parse(raw: dict[str, Any]) -> AttackOutput:
    fields = {f.name for f in dataclasses.fields(AttackOutput)}
    if set(raw) != fields:
        raise KeyError(", ".join(sorted(set(raw) ^ fields)))
    return AttackOutput(**{**raw,
                           "methods": {str(n): AttackMethod(**{"linf_bound_holds": None, **m})
                                       for n, m in raw["methods"].items()},
                           "transfer": {str(b): dict(row) for b, row in raw["transfer"].items()},
                           "examples": [AttackExample(**e) for e in raw["examples"]]})
