"""Stage `adversarial`: params validation (fast) and a real EfficientNet-Lite0 attack on real photos (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.gradients import attack_artifact
from pipeline.params import ParamsError, parse_section
from stages import adversarial


def parse(**values):
    return parse_section(adversarial.AdversarialParams, values, prefix="adversarial")


def test_defaults_validate():
    p = parse()
    assert (p.source, p.target, p.epsilon, p.methods) == ("dog", "cat", 2.0, ("fgsm", "pgd", "unbounded"))


@pytest.mark.parametrize("values, match", [
    ({"epsilon": 0}, r"adversarial\.epsilon: 0\.0 is out of range; it must be > 0"),
    ({"epsilon": -2}, r"adversarial\.epsilon: -2\.0 is out of range"),
    ({"epsilon": 0.5}, r"adversarial\.epsilon: 0\.5 is below one grey level"),
    ({"target": "imagenet:zebr"}, r"adversarial\.target: 'zebr' is not an ImageNet class name; near matches: 'zebra'"),
    ({"target": "species:horse"}, r"adversarial\.target: species 'horse' is unknown"),
    ({"source": "imagenet:beagle"}, r"adversarial\.source: 'imagenet:beagle' must name dataset classes"),
    ({"head": "imagenet"}, r"adversarial\.head: 'imagenet' is not a trained head"),
    ({"methods": ["pgd", "pgd"]}, r"adversarial\.methods: .* lists a method twice"),
    ({"methods": ["cw"]}, r"adversarial\.methods\[0\]: 'cw' is not allowed"),
    ({"transfer": ["vgg1"]}, r"adversarial\.transfer\[0\]: 'vgg1' is not a registered backbone"),
])
def test_bad_params_name_the_key(values, match):
    with pytest.raises(ParamsError, match=match):
        parse(**values)


def _ctx(tmp_path, world, **values):
    from stages import features
    from tests.stage_helpers import make_ctx, section

    params = {"adversarial": parse(**values), "backbone": section(features.BackboneParams, "backbone")}
    return make_ctx(adversarial.STAGE, params, tmp_path / "adv", cache_dir=world.cache,
                    inputs={"data": world.data, "heads": world.heads})


@pytest.mark.slow
def test_unknown_class_names_are_user_errors_naming_the_key(tmp_path):
    from pipeline.errors import UserError
    from tests.gradient_fixtures import lite0_world

    world = lite0_world()
    with pytest.raises(UserError, match=r"adversarial\.target: 'kat' is not a class of the 'logreg' head"):
        adversarial.STAGE.run(_ctx(tmp_path, world, target="kat"))
    with pytest.raises(UserError, match=r"adversarial\.source: 'dgo' is not a class of the dataset.*'dog'"):
        adversarial.STAGE.run(_ctx(tmp_path, world, source="dgo"))
    with pytest.raises(UserError, match=r"adversarial\.head: no trained head 'mlp'.*logreg"):
        adversarial.STAGE.run(_ctx(tmp_path, world, head="mlp"))


@pytest.mark.slow
def test_pgd_at_epsilon_2_succeeds_on_uint8_dog_photos(tmp_path):
    """Real lite0 weights, a logreg head fitted on real photos, real test dog photos, eps = 2/255."""
    from tests.gradient_fixtures import lite0_world

    world = lite0_world()
    ctx = _ctx(tmp_path, world, methods=["pgd"], max_images=4, batch_size=4, steps=5, refine_steps=2,
               transfer=[], save_examples=4)
    summary = adversarial.STAGE.run(ctx)
    out = tmp_path / "adv"
    m = json.loads((out / "metrics.json").read_text())
    assert m["images"] == 4 and m["source"] == "dog" and m["target"] == "cat"
    assert m["clean_target_rate"] <= 0.25  # the head gets (almost) all of these dogs right before the attack
    pgd = m["methods"]["pgd"]
    assert pgd["success_rate"] == 1.0 and summary["pgd_success"] == 1.0  # measured on the uint8 images
    assert pgd["max_linf"] <= 2 and pgd["linf_bound_holds"] and pgd["mean_psnr"] > 40.0
    assert len(m["examples"]) == 4
    typed = attack_artifact.read(out)  # what the report and `show` read
    assert typed.headline() == ("pgd", pgd["success_rate"]) and len(typed.examples) == 4
    for ex in m["examples"]:
        orig = np.asarray(Image.open(out / ex["original"])).astype(int)
        adv = np.asarray(Image.open(out / ex["adversarial"])).astype(int)
        assert np.abs(adv - orig).max() <= 2  # the bound holds exactly on the saved 8-bit files
        assert ex["success"] and ex["adversarial_prediction"].startswith("cat")
        assert (out / ex["perturbation"]).is_file()
