"""The ideal and adversarial stages' outputs: one type each, written by `write`, read back by `read`."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from pipeline.errors import UserError
from pipeline.gradients import attack_artifact, ideal_artifact
from pipeline.gradients.attack_artifact import AttackExample, AttackMethod, AttackOutput
from pipeline.gradients.ideal_artifact import (IdealImage, IdealOutput, IdealRecipe, IdealWork, TransferHit,
                                               TransferRate)


def _ideal() -> IdealOutput:
    settings = {"steps": 4, "lr": 0.05, "param": "fourier", "jitter": 8.0}
    return IdealOutput(
        backbone="efficientnet_lite0", head="logreg", targets=["tabby", "cat"],
        recipes={"main": IdealRecipe(settings=settings, seconds=1.5, compiles=1, mean_prob=0.9, min_prob=0.8,
                                     mean_tv=0.02, transfer={"efficientnet_lite1": TransferRate(0.5, 1.0, 2)}),
                 "lesson": IdealRecipe(settings={**settings, "param": "pixel"}, seconds=0.5, compiles=0,
                                       mean_prob=0.99, min_prob=0.98, mean_tv=0.3)},
        images=[IdealImage(target="tabby", spec="tabby", head="imagenet", option="main", image="00_tabby.png",
                           prob=0.8, tv=0.02, top5=[("tabby", 0.8), ("tiger cat", 0.1)], prob_curve=[0.001, 0.8],
                           transfer={"efficientnet_lite1": TransferHit("tabby", True, True)}),
                IdealImage(target="cat", spec="logreg:cat", head="logreg", option="lesson",
                           image="lesson/01_logreg_cat.png", prob=0.98, tv=0.3, top5=[("cat", 0.98), ("dog", 0.02)],
                           prob_curve=[0.5, 0.98], transfer={"efficientnet_lite1": TransferHit("Persian cat")})],
        work=IdealWork(batches=2, reused=0, image_steps=16, seconds=2.0, image_steps_per_second=8.0))


def _attack() -> AttackOutput:
    pgd = AttackMethod(success_rate=1.0, successes=2, prob_over_half_rate=1.0, mean_target_prob=0.9,
                       min_target_prob=0.8, mean_linf=2.0, max_linf=2.0, mean_l2=300.0, mean_psnr=45.1,
                       min_psnr=44.0, seconds=3.0, seconds_per_image=1.5, linf_bound_holds=True, passes=4,
                       image_steps_per_second=2.7)
    unbounded = dataclasses.replace(pgd, linf_bound_holds=None, mean_psnr=None, min_psnr=None)
    ex = AttackExample(id="beagle/1.jpg", method="pgd", original="examples/00_1_original.png",
                       perturbation="examples/00_1_pgd_perturbation.png",
                       adversarial="examples/00_1_pgd_adversarial.png", original_prediction="beagle (0.900)",
                       original_target_prob=0.01, adversarial_prediction="Bengal (0.700)",
                       adversarial_target_prob=0.95, success=True, linf=2.0, psnr=float("inf"))
    return AttackOutput(backbone="efficientnet_lite0", classifier="efficientnet_lite0+logreg", source="dog",
                        target="cat", split="test", images=2, epsilon=2.0, clean_target_rate=0.0,
                        clean_mean_target_prob=0.02, methods={"pgd": pgd, "unbounded": unbounded},
                        transfer={"efficientnet_lite1": {"clean": 0.0, "pgd": 0.5, "unbounded": 1.0}},
                        examples=[ex])


@pytest.mark.parametrize("module,make", [(ideal_artifact, _ideal), (attack_artifact, _attack)])
def test_write_then_read_gives_the_same_artifact(tmp_path, module, make):
    assert module.read(tmp_path) is None and module.read(None) is None  # the stage did not run
    module.write(tmp_path, make())
    assert module.read(tmp_path) == make()


def test_the_on_disk_shape_keeps_its_key_names(tmp_path):
    ideal_artifact.write(tmp_path, _ideal())
    doc = json.loads((tmp_path / "ideal.json").read_text())
    assert doc["main_min_prob"] == 0.8 and doc["recipes"]["main"]["transfer"]["efficientnet_lite1"]["checked"] == 2
    assert "transfer" not in doc["recipes"]["lesson"]  # no rates where nothing was checked
    assert doc["images"][0]["top5"][0] == {"class": "tabby", "prob": 0.8}
    assert doc["images"][1]["transfer"] == {"efficientnet_lite1": {"top1": "Persian cat"}}  # no ImageNet group
    attack_artifact.write(tmp_path, _attack())
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["methods"]["pgd"]["linf_bound_holds"] is True and "linf_bound_holds" not in m["methods"]["unbounded"]
    assert m["examples"][0]["adversarial"] == "examples/00_1_pgd_adversarial.png"
    assert _attack().headline() == ("pgd", 1.0)


@pytest.mark.parametrize("module,make,file,stage", [(ideal_artifact, _ideal, "ideal.json", "ideal"),
                                                    (attack_artifact, _attack, "metrics.json", "adversarial")])
@pytest.mark.parametrize("damage", ["not json {", "[]", "drop_key"])
def test_a_malformed_file_is_a_user_error_naming_it_and_the_fix(tmp_path, module, make, file, stage, damage):
    module.write(tmp_path, make())
    if damage == "drop_key":
        doc = json.loads((tmp_path / file).read_text())
        del (doc["images"][0] if stage == "ideal" else doc["examples"][0])["prob" if stage == "ideal" else "success"]
        damage = json.dumps(doc)
    (tmp_path / file).write_text(damage)
    with pytest.raises(UserError, match=re.escape(str(tmp_path / file)) + rf".*rerun the stage.*--force {stage}"):
        module.read(tmp_path)


def test_the_report_shows_the_typed_fields(tmp_path):
    """Cards of a written output: the ideal image with its numbers, the attack's three roles in order."""
    from PIL import Image

    from pipeline.report import galleries
    from pipeline.report.common import Options

    ideal_dir, adv_dir = tmp_path / "ideal", tmp_path / "adv"
    for folder, out in ((ideal_dir, _ideal()), (adv_dir, _attack())):
        names = ([im.image for im in out.images] + [out.grid] if folder == ideal_dir else
                 [getattr(e, r) for e in out.examples for r in ("original", "perturbation", "adversarial")])
        for name in names:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (120, 30, 30)).save(folder / name)
    ideal_artifact.write(ideal_dir, _ideal())
    attack_artifact.write(adv_dir, _attack())
    sec = galleries.ideal_section(ideal_dir, Options())
    card = sec.blocks[-2].cards[0]  # the main recipe's gallery, before the other recipe's
    assert card.title == "tabby" and card.lines[:3] == ["p(target) = 80.0% on imagenet", "total variation 0.02",
                                                         "top-5: tabby 80%, tiger cat 10%"]
    assert card.lines[3] == "efficientnet_lite1 sees tabby ✓"
    sec = galleries.adversarial_section(adv_dir, Options())
    card = sec.blocks[-1].cards[0]
    assert [label for _, label in card.images] == ["original", "perturbation (amplified)", "adversarial"]
    assert card.kind == "good" and "after: Bengal (0.700), p(target) 95.0%" in card.lines
    assert galleries.attack_headline(_attack()) == ("pgd", 1.0, "dog → cat")
