"""The ideal stage's output: `IdealOutput`, its one writer (`write`) and its one reader (`read`).

On disk (PNG files are written by the stage, `pipeline.gradients.pictures`; the index names them
by their path relative to the output folder):

  <NN>_<target>.png            the main recipe's image of each target
  <recipe>/<NN>_<target>.png   each compare recipe's
  grid.png                     rows = recipes, columns = targets (``grid``)
  ideal.json                   {"backbone", "head", "targets": [label, ...], "grid",
                                "main_min_prob", "main_mean_prob", "main_mean_tv" (the main recipe's),
                                "recipes": {name: {"settings": the recipe's `IdealSettings` as a dict,
                                  "seconds", "compiles", "mean_prob", "min_prob", "mean_tv",
                                  "transfer": {backbone: {"top1_rate", "top5_rate", "checked"}}
                                  (only where some target has ImageNet classes to hit)}},
                                "images": [{"target", "spec", "head", "option" (the recipe), "image",
                                  "prob", "tv", "top5": [{"class", "prob"}, ...], "prob_curve": [p, ...],
                                  "transfer": {backbone: {"top1", "top1_hit", "top5_hit"}}
                                  (hits only where the target has ImageNet classes; no "transfer"
                                  without other backbones)}],
                                "work": {"batches", "reused", "image_steps", "seconds",
                                  "image_steps_per_second"}}

The report and `show`/`compare` (`pipeline.results`) read it through `read`. Changing this shape
bumps ``stages/ideal.py``'s version.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

from pipeline.plain import read_output_json

FILE = "ideal.json"
MAIN = "main"  # the recipe that is the params section itself
_KEYS = {"backbone", "head", "targets", "grid", "main_min_prob", "main_mean_prob", "main_mean_tv", "recipes",
         "images", "work"}


@dataclasses.dataclass(frozen=True)
class TransferRate:
    """How often another backbone's ImageNet head reads a recipe's images as their target."""

    top1_rate: float
    top5_rate: float
    checked: int  # images whose target has ImageNet classes to hit


@dataclasses.dataclass(frozen=True)
class TransferHit:
    """What another backbone's ImageNet head sees in one image: its top-1 class, and whether the
    target's ImageNet classes are its top-1 / among its top-5 (None: the target has none)."""

    top1: str
    top1_hit: bool | None = None
    top5_hit: bool | None = None


@dataclasses.dataclass(frozen=True)
class IdealRecipe:
    """One recipe over all targets: its settings, time and the probabilities it reached."""

    settings: Mapping[str, Any]
    seconds: float
    compiles: int
    mean_prob: float
    min_prob: float
    mean_tv: float
    transfer: Mapping[str, TransferRate] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class IdealImage:
    """One optimised image.

    Attributes:
      target: the target's label; spec: as written in params; head: the classifier it was made for.
      option: the recipe; image: the PNG, relative to the output folder.
      prob: the target probability reached; tv: total variation of the saved PNG.
      top5: (class, probability) of the head's five most likely classes.
      prob_curve: the target probability at sampled steps of the optimisation.
      transfer: backbone -> what its ImageNet head sees in the image.
    """

    target: str
    spec: str
    head: str
    option: str
    image: str
    prob: float
    tv: float
    top5: list[tuple[str, float]]
    prob_curve: list[float]
    transfer: Mapping[str, TransferHit] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class IdealWork:
    """What the run computed: batches optimised, targets reused from the memo, image-steps, time."""

    batches: int
    reused: int
    image_steps: int
    seconds: float
    image_steps_per_second: float | None


@dataclasses.dataclass(frozen=True)
class IdealOutput:
    """ideal.json: every recipe's summary and every image's record."""

    backbone: str
    head: str
    targets: list[str]
    recipes: Mapping[str, IdealRecipe]
    images: list[IdealImage]
    work: IdealWork
    grid: str = "grid.png"

    @property
    def main(self) -> IdealRecipe:
        return self.recipes[MAIN]


def write(out_dir: str | Path, out: IdealOutput) -> None:
    """Write ideal.json (the PNGs it names are the stage's to write)."""
    main = out.main
    doc = {"backbone": out.backbone, "head": out.head, "targets": list(out.targets), "grid": out.grid,
           "main_min_prob": main.min_prob, "main_mean_prob": main.mean_prob, "main_mean_tv": main.mean_tv,
           "recipes": {name: _recipe_json(r) for name, r in out.recipes.items()},
           "images": [_image_json(im) for im in out.images], "work": dataclasses.asdict(out.work)}
    (Path(out_dir) / FILE).write_text(json.dumps(doc, indent=1))


def read(folder: str | Path | None) -> IdealOutput | None:
    """The ideal stage's output, or None when `folder` is None or holds no ideal.json.

    Raises:
      UserError: ideal.json is there but is not what `write` writes (naming the file and the fix).
    """
    return read_output_json(Path(folder) / FILE, "ideal", _parse) if folder is not None else None


def _parse(raw: dict[str, Any]) -> IdealOutput:
    if set(raw) != _KEYS or MAIN not in raw["recipes"]:
        raise KeyError(", ".join(sorted(set(raw) ^ _KEYS)) or MAIN)
    return IdealOutput(
        backbone=str(raw["backbone"]), head=str(raw["head"]), targets=[str(t) for t in raw["targets"]],
        grid=str(raw["grid"]),
        recipes={str(n): IdealRecipe(settings=dict(r["settings"]), seconds=r["seconds"], compiles=int(r["compiles"]),
                                     mean_prob=r["mean_prob"], min_prob=r["min_prob"], mean_tv=r["mean_tv"],
                                     transfer={b: TransferRate(**t) for b, t in r.get("transfer", {}).items()})
                 for n, r in raw["recipes"].items()},
        images=[IdealImage(target=str(im["target"]), spec=str(im["spec"]), head=str(im["head"]),
                           option=str(im["option"]), image=str(im["image"]), prob=im["prob"], tv=im["tv"],
                           top5=[(str(c["class"]), c["prob"]) for c in im["top5"]],
                           prob_curve=list(im["prob_curve"]),
                           transfer={b: TransferHit(**t) for b, t in im.get("transfer", {}).items()})
                for im in raw["images"]],
        work=IdealWork(**raw["work"]))


def _recipe_json(r: IdealRecipe) -> dict[str, Any]:
    d = {"settings": dict(r.settings), "seconds": r.seconds, "compiles": r.compiles, "mean_prob": r.mean_prob,
         "min_prob": r.min_prob, "mean_tv": r.mean_tv}
    if r.transfer:
        d["transfer"] = {b: dataclasses.asdict(t) for b, t in r.transfer.items()}
    return d


def _image_json(im: IdealImage) -> dict[str, Any]:
    d = {"target": im.target, "spec": im.spec, "head": im.head, "option": im.option, "image": im.image,
         "prob": im.prob, "tv": im.tv, "top5": [{"class": c, "prob": p} for c, p in im.top5],
         "prob_curve": list(im.prob_curve)}
    if im.transfer:
        d["transfer"] = {b: {k: v for k, v in dataclasses.asdict(t).items() if v is not None}
                         for b, t in im.transfer.items()}
    return d
