"""The ``ideal`` params section: the main recipe, the variants it is compared with, and the
settings each becomes (`recipes`). It lives with its topic so that the stage module stays the
stage: read params, run the optimiser, write the images."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal, Union

from pipeline.params import ParamsError, spec

_TUNABLE = ("steps", "lr", "optimizer", "param", "decay", "tv_weight", "l2_weight", "jitter", "scale",
            "rotate", "polish", "objective")


@dataclasses.dataclass(frozen=True)
class IdealOption:
    """One entry of ``ideal.compare``: a named variant; fields left null keep the main setting."""

    name: str = spec("", help="label of the variant (folder name, grid row)")
    steps: int | None = spec(None, min=1, help="optimisation steps")
    lr: float | None = spec(None, min=0, min_exclusive=True, help="learning rate")
    optimizer: Literal["adam", "sgd"] | None = spec(None, help="optax optimiser")
    param: Literal["pixel", "fourier"] | None = spec(None, help="image parameterisation")
    decay: float | None = spec(None, min=0, help="Fourier spectrum decay power")
    tv_weight: float | None = spec(None, min=0, help="total-variation weight")
    l2_weight: float | None = spec(None, min=0, help="L2-to-grey weight")
    jitter: float | None = spec(None, min=0, help="largest random shift, pixels")
    scale: float | None = spec(None, min=0, max=0.5, help="largest random relative zoom")
    rotate: float | None = spec(None, min=0, max=45, help="largest random rotation, degrees")
    polish: float | None = spec(None, min=0, max=1, help="share of the last steps run without transforms")
    objective: Literal["prob", "logit"] | None = spec(None, help="what is maximised: prob or logit")

    def validate(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", self.name or ""):
            raise ParamsError(f"name: {self.name!r} must be a non-empty label of letters, digits, _ . + - "
                              "(it names a folder).")


_DEFAULT_COMPARE = (
    # The lesson: plain gradient ascent on the pixels, nothing else.
    IdealOption(name="lesson", param="pixel", lr=0.05, tv_weight=0.0, l2_weight=0.0, jitter=0.0, scale=0.0,
                rotate=0.0, polish=0.0, objective="prob"),
)
"""One comparison by default, the lesson's: the demo (the embedded sample, on a laptop CPU) should
show the point -- plain pixel ascent gives noise, the main recipe a picture -- in seconds. Every
recipe is a row of each target's batch, so each costs as much as the main one. The old
probability objective and the ablations of the main recipe (pixels + TV, no transforms, the 1/f
spectrum), at the full step count, are in ``params.ideal-study.yaml``."""


@dataclasses.dataclass(frozen=True)
class IdealParams:
    """params.yaml section ``ideal``."""

    targets: tuple[Union[str, int], ...] = spec(
        ("tabby", "zebra", "goldfish", "logreg:cat"), min_len=1,
        help="classes to visualise: ImageNet names/ids (tabby, 340), imagenet:<name>, a trained head's "
             "class (logreg:cat, mlp:Abyssinian), species:cat")
    head: str = spec("imagenet", help="classifier that plain target names refer to: imagenet, logreg or mlp")
    steps: int = spec(32, min=1, help="optimisation steps (the study overlay runs 160)")
    lr: float = spec(0.25, min=0, min_exclusive=True,
                     help="learning rate (Adam; for param pixel, on the 0..1 intensity scale)")
    optimizer: Literal["adam", "sgd"] = spec("adam", help="optax optimiser (sgd uses momentum 0.9)")
    param: Literal["pixel", "fourier"] = spec(
        "fourier", help="image parameterisation: pixel (clipped) or fourier (decorrelated colour, 1/f spectrum)")
    decay: float = spec(1.5, min=0, help="Fourier spectrum decay power (1 = 1/f); steeper puts more of each "
                                         "step into coarse structure")
    tv_weight: float = spec(0.5, min=0, help="weight of total variation (mean neighbour difference, 0..1 scale)")
    l2_weight: float = spec(30.0, min=0, help="weight of the mean squared distance to grey (0..1 scale); with "
                                              "the logit objective it keeps the image from blowing out")
    jitter: float = spec(8.0, min=0, help="largest random shift per step, pixels")
    scale: float = spec(0.1, min=0, max=0.5, help="largest random zoom per step (0.1 = 0.9..1.1)")
    rotate: float = spec(10.0, min=0, max=45, help="largest random rotation per step, degrees (at most 45)")
    polish: float = spec(0.1, min=0, max=1, help="share of the last steps run without transforms, so that the "
                                                 "final image itself (not only its transformed copies) reaches "
                                                 "the target")
    objective: Literal["prob", "logit"] = spec(
        "logit", help="what is maximised: the target's log-probability (prob) or its logit (logit; for a group "
                     "the logsumexp of its logits), which does not saturate and cannot rise by pushing other "
                     "classes down")
    seed: int = spec(0, help="seed of the initial noise and the transforms")
    compare: tuple[IdealOption, ...] = spec(_DEFAULT_COMPARE, help="variants to run as well, for the report")
    transfer: tuple[str, ...] = spec(("efficientnet_lite1", "efficientnet_lite2"),
                                     help="other backbones that classify the images (cross-backbone check)")

    def validate(self) -> None:
        from pipeline.gradients import targets as targets_lib
        from pipeline.models import registry

        for i, t in enumerate(self.targets):
            try:
                targets_lib.check_static(t, self.head, f"targets[{i}]")
            except targets_lib.TargetError as e:
                raise ParamsError(str(e)) from None
        if not re.fullmatch(r"[A-Za-z0-9_]+", self.head):
            raise ParamsError(f"head: {self.head!r} is not a head name; use imagenet, logreg or mlp.")
        names = [o.name for o in self.compare]
        for i, n in enumerate(names):
            if n == "main" or names.index(n) != i:
                raise ParamsError(f"compare[{i}].name: {n!r} is used twice (or is 'main', the name of the "
                                  "main recipe); give each variant its own name.")
        registry.check_names(self.transfer, "transfer")


def recipe_values(p: IdealParams) -> list[tuple[str, dict[str, Any]]]:
    """(name, `IdealSettings` fields) for the main recipe and each compare option.

    ``polish`` (a share of the steps in params) becomes a number of steps here.
    """
    main = {k: getattr(p, k) for k in _TUNABLE}
    out = []
    for name, values in [("main", main)] + [
            (o.name, {**main, **{k: getattr(o, k) for k in _TUNABLE if getattr(o, k) is not None}})
            for o in p.compare]:
        out.append((name, {**values, "polish": int(round(values["polish"] * values["steps"])), "seed": p.seed}))
    return out


def recipes(p: IdealParams) -> list[tuple[str, Any]]:
    """(name, IdealSettings) for the main recipe and each compare option."""
    from pipeline.gradients.ideal import IdealSettings

    return [(name, IdealSettings(**values)) for name, values in recipe_values(p)]
