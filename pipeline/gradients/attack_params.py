"""The ``adversarial`` params section: which photos are attacked, towards what, by which attacks
and within what bound. It lives with its topic so that the stage module stays the stage."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from pipeline.params import ParamsError, spec

Method = Literal["fgsm", "pgd", "unbounded"]


@dataclasses.dataclass(frozen=True)
class AdversarialParams:
    """params.yaml section ``adversarial``."""

    source: str = spec("dog", help="photos to attack: a dataset class, or dog / species:dog for every dog class")
    target: str = spec("cat", help="what the classifier should say: a class of the trained head, cat / "
                                   "species:cat (any cat class), or imagenet:<name|id|cat|dog>")
    head: str = spec("logreg", help="trained head that classifies (logreg or mlp); imagenet: targets use "
                                    "the backbone's ImageNet head")
    split: Literal["test", "val", "train"] = spec("test", help="split the source photos come from")
    max_images: int = spec(8, min=1, help="attack at most this many source photos (in split order)")
    methods: tuple[Method, ...] = spec(("fgsm", "pgd", "unbounded"), min_len=1, help="attacks to run")
    epsilon: float = spec(2.0, min=0, min_exclusive=True, max=255,
                          help="L-inf bound in grey levels of 0..255 (2 = 2/255), for fgsm and pgd")
    steps: int = spec(10, min=1, help="most PGD iterations (an image stops once the head says target with p > 0.5)")
    step_size: float = spec(0.5, min=0, min_exclusive=True, help="PGD step, grey levels")
    random_start: bool = spec(False, help="start PGD from a random point of the epsilon ball")
    refine_steps: int = spec(5, min=0, help="after rounding to uint8: at most this many signed one-level steps on the integer grid")
    unbounded_steps: int = spec(30, min=1, help="most Adam steps of the unbounded attack (it stops like PGD)")
    unbounded_lr: float = spec(1.0, min=0, min_exclusive=True, help="Adam learning rate of the unbounded attack, grey levels")
    batch_size: int = spec(8, min=1, help="photos attacked together (a batch is padded to this size: one compiled shape)")
    save_examples: int = spec(8, min=0, help="write PNGs for the first N attacked photos")
    transfer: tuple[str, ...] = spec(("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"),
                                     help="backbones whose ImageNet heads judge the adversarial images")
    seed: int = spec(0, help="seed of the PGD random start")

    def validate(self) -> None:
        from pipeline.gradients import targets as targets_lib
        from pipeline.models import registry

        if self.epsilon < 1:
            raise ParamsError(f"epsilon: {self.epsilon!r} is below one grey level; the attack is judged on "
                              "uint8 images, where a smaller bound allows no change. Use epsilon >= 1 "
                              "(2 means 2/255).")
        try:
            targets_lib.check_static(self.target, self.head, "target")
        except targets_lib.TargetError as e:
            raise ParamsError(str(e)) from None
        prefix, name = targets_lib.split_spec(self.source)
        if not name or prefix not in (None, "species"):
            raise ParamsError(f"source: {self.source!r} must name dataset classes: a class name, dog, or "
                              "species:dog (not an ImageNet class).")
        if prefix == "species" and name not in targets_lib.SPECIES:
            raise ParamsError(f"source: species {name!r} is unknown; use species:cat or species:dog.")
        if len(set(self.methods)) != len(self.methods):
            raise ParamsError(f"methods: {list(self.methods)!r} lists a method twice.")
        if self.head == targets_lib.IMAGENET or not re.fullmatch(r"[A-Za-z0-9_]+", self.head):
            raise ParamsError(f"head: {self.head!r} is not a trained head; use logreg, mlp or finetune "
                              "(write the target as imagenet:<name> to attack the ImageNet head).")
        registry.check_names(self.transfer, "transfer")
