"""Stage `ideal`: params validation (fast) and a real EfficientNet-Lite0 run (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.gradients import ideal_artifact
from pipeline.params import ParamsError, parse_section
from stages import ideal


def parse(**values):
    return parse_section(ideal.IdealParams, values, prefix="ideal")


def test_defaults_validate_and_recipes_inherit_unset_fields():
    p = parse(tv_weight=2.0, compare=[{"name": "plain", "param": "pixel", "jitter": 0}])
    (main_name, main), (name, plain) = ideal.recipes(p)
    assert (main_name, name) == ("main", "plain")
    assert main.param == "fourier" and main.tv_weight == 2.0 and main.jitter == 8.0
    assert plain.param == "pixel" and plain.jitter == 0.0
    assert plain.tv_weight == 2.0 and plain.rotate == main.rotate and plain.steps == main.steps  # inherited
    assert main.polish == round(0.1 * main.steps)  # params give a share of the steps, settings a count
    (_, short), = ideal.recipes(parse(steps=10, polish=0.5, compare=[]))
    assert short.polish == 5
    assert [n for n, _ in ideal.recipes(parse())] == ["main", "lesson"]  # the rest: params.ideal-study.yaml


def test_ideal_study_overlay_adds_the_ablations():
    from pathlib import Path

    from pipeline import planner
    from pipeline.graph import load_graph

    root = Path(__file__).resolve().parents[1]
    params = planner.resolve_params(load_graph(), [root / "params.yaml", root / "params.ideal-study.yaml"])
    assert [n for n, _ in ideal.recipes(params["ideal"])] == ["main", "lesson", "prob", "pixel_tv_transforms",
                                                            "no_transforms", "decay_1"]


@pytest.mark.parametrize("values, match", [
    ({"targets": ["tabby", "zebr"]}, r"ideal\.targets\[1\]: 'zebr' is not an ImageNet class name; near matches: 'zebra'"),
    ({"targets": ["imagenet:tabyy"]}, r"ideal\.targets\[0\]: 'tabyy' .*'tabby'"),
    ({"targets": ["species:horse"]}, r"ideal\.targets\[0\]: species 'horse' is unknown"),
    ({"targets": []}, r"ideal\.targets: needs at least 1"),
    ({"compare": [{"name": "a"}, {"name": "a"}]}, r"ideal\.compare\[1\]\.name: 'a' is used twice"),
    ({"compare": [{"name": "x y"}]}, r"ideal\.compare\[0\]\.name: 'x y' must be"),
    ({"compare": [{"name": "a", "tv_wieght": 1}]}, r"ideal\.compare\[0\]\.tv_wieght: unknown key\. Did you mean"),
    ({"transfer": ["resnet9000"]}, r"ideal\.transfer\[0\]: 'resnet9000' is not a registered backbone"),
    ({"lr": 0}, r"ideal\.lr: 0\.0 is out of range; it must be > 0"),
    ({"param": "wavelet"}, r"ideal\.param: 'wavelet' is not allowed"),
    ({"polish": 1.5}, r"ideal\.polish: 1\.5 is out of range; it must be <= 1"),
    ({"rotate": 90}, r"ideal\.rotate: 90\.0 is out of range; it must be <= 45"),
])
def test_bad_params_name_the_key(values, match):
    with pytest.raises(ParamsError, match=match):
        parse(**values)


def test_trained_head_targets_are_checked_at_run_time(tmp_path):
    """Head class names are known only once the heads stage ran: a UserError naming the key."""
    from pipeline.errors import UserError
    from pipeline.heads.trained import save_head
    from stages import features
    from tests.stage_helpers import make_ctx, section

    (tmp_path / "heads").mkdir()
    save_head(tmp_path / "heads", "logreg", "linear", {"W": np.zeros((4, 1), np.float32), "b": np.zeros(1, np.float32)},
              {}, ["cat", "dog"])
    params = {"ideal": parse(targets=["logreg:kat"]), "backbone": section(features.BackboneParams, "backbone")}
    ctx = make_ctx(ideal.STAGE, params, tmp_path / "out", inputs={"heads": tmp_path / "heads"})
    with pytest.raises(UserError, match=r"ideal\.targets\[0\]: 'kat' is not a class of the 'logreg' head"):
        ideal.STAGE.run(ctx)
    params["ideal"] = parse(targets=["mlp:cat"])
    ctx = make_ctx(ideal.STAGE, params, tmp_path / "out2", inputs={"heads": tmp_path / "heads"})
    with pytest.raises(UserError, match=r"ideal\.targets\[0\]: 'mlp' is not a classifier here.*'logreg'"):
        ideal.STAGE.run(ctx)


@pytest.mark.slow
def test_stage_real_weights_raises_target_probability(tmp_path):
    """Lite0 + ImageNet head and Lite0 + a logreg head trained on real photos, a few steps."""
    from pipeline.gradients import regularizers
    from stages import features
    from tests.gradient_fixtures import lite0_world
    from tests.stage_helpers import run_stage, section

    world = lite0_world()
    params = {"ideal": parse(targets=["tabby", "logreg:cat"], steps=12,
                             compare=[{"name": "no_transforms", "steps": 4, "jitter": 0, "scale": 0, "rotate": 0}],
                             transfer=["efficientnet_lite0", "efficientnet_lite1"]),
              "backbone": section(features.BackboneParams, "backbone")}
    summary, ctx = run_stage(ideal.STAGE, params, tmp_path / "ideal", cache_dir=world.cache,
                             inputs={"heads": world.heads})
    out = tmp_path / "ideal"
    doc = json.loads((out / "ideal.json").read_text())
    assert doc["targets"] == ["tabby", "cat"] and set(doc["recipes"]) == {"main", "no_transforms"}
    # One compiled step for both recipes: magnitudes are traced values, not static arguments.
    assert doc["recipes"]["main"]["compiles"] == 1 and doc["recipes"]["no_transforms"]["compiles"] == 0
    for rec in doc["images"]:
        odds = [p / (1 - p) if p < 1 else np.inf for p in (rec["prob_curve"][0], rec["prob"])]
        assert odds[1] > 5 * odds[0], rec  # the target probability rises (odds x5 at least)
        assert len(rec["top5"]) == (5 if rec["head"] == "imagenet" else 2)  # 2 classes: cat, dog
        png = np.asarray(Image.open(out / rec["image"]))
        assert png.shape == (224, 224, 3) and png.dtype == np.uint8
        tv = float(regularizers.total_variation(png[None] / 255.0)[0])
        assert abs(tv - rec["tv"]) < 1e-4  # the JSON describes the PNG that was saved
        # Cross-backbone check on lite1 only: lite0 is the backbone the images were made on.
        assert set(rec["transfer"]) == {"efficientnet_lite1"}
        assert isinstance(rec["transfer"]["efficientnet_lite1"]["top5_hit"], bool)
    main = {r["spec"]: r for r in doc["images"] if r["option"] == "main"}
    assert main["tabby"]["prob"] > 0.5 and main["logreg:cat"]["prob"] > 0.9
    assert (out / "grid.png").is_file() and (out / "no_transforms" / "00_tabby.png").is_file()
    assert summary["targets"] == 2
    typed = ideal_artifact.read(out)  # what the report and `show` read
    assert typed.main.compiles == 1 and len(typed.images) == len(doc["images"]) and typed.grid == "grid.png"


@pytest.mark.slow
def test_head_change_recomputes_only_head_targets_and_output_is_the_same_either_way(tmp_path):
    """An ImageNet target's images are remembered across a head change (they never read the
    head); a `logreg:cat` target's are recomputed. The stage's output after the change is the
    same, byte for byte, as a run of the changed head on an empty cache (no memo)."""
    import shutil

    from pipeline.heads.trained import load_head, save_head
    from stages import features
    from tests.gradient_fixtures import lite0_world
    from tests.stage_helpers import run_stage, section

    world = lite0_world()
    changed = tmp_path / "heads_changed"  # the same head, refitted differently: other weights
    changed.mkdir()
    head = load_head(world.heads, "logreg")
    save_head(changed, "logreg", "linear", {"W": 1.5 * np.asarray(head.params["W"]), "b": np.asarray(head.params["b"])},
              {}, world.classes)

    def cache(name):
        root = tmp_path / name
        root.mkdir()
        (root / "weights").symlink_to(world.cache / "weights")  # converted weights, not memos
        return root

    params = {"ideal": parse(targets=["tabby", "logreg:cat"], steps=6, polish=0.5,
                             compare=[{"name": "lesson", "param": "pixel", "lr": 0.05, "jitter": 0, "scale": 0,
                                       "rotate": 0, "objective": "prob"}],
                             transfer=["efficientnet_lite1"]),
              "backbone": section(features.BackboneParams, "backbone")}
    warm = cache("warm")
    first, _ = run_stage(ideal.STAGE, params, tmp_path / "first", cache_dir=warm, inputs={"heads": world.heads})
    assert first["reused"] == 0
    after, _ = run_stage(ideal.STAGE, params, tmp_path / "after", cache_dir=warm, inputs={"heads": changed})
    cold, _ = run_stage(ideal.STAGE, params, tmp_path / "cold", cache_dir=cache("cold"), inputs={"heads": changed})
    assert after["reused"] == 1 and cold["reused"] == 0  # tabby reused; logreg:cat recomputed

    def doc(name):
        d = json.loads((tmp_path / name / "ideal.json").read_text())
        for r in d["recipes"].values():
            r.pop("seconds")
        return {**d, "work": None}

    assert json.loads((tmp_path / "after" / "ideal.json").read_text())["work"]["batches"] == 1
    assert doc("after") == doc("cold")
    files = sorted(p.relative_to(tmp_path / "cold") for p in (tmp_path / "cold").rglob("*.png"))
    assert files and files == sorted(p.relative_to(tmp_path / "after") for p in (tmp_path / "after").rglob("*.png"))
    for f in files:
        assert (tmp_path / "after" / f).read_bytes() == (tmp_path / "cold" / f).read_bytes(), f
    # The head target did change with the head; the ImageNet target did not.
    assert (tmp_path / "first" / "00_tabby.png").read_bytes() == (tmp_path / "after" / "00_tabby.png").read_bytes()
    assert (tmp_path / "first" / "01_logreg_cat.png").read_bytes() != (tmp_path / "after" / "01_logreg_cat.png").read_bytes()
    # A damaged memo is recomputed, not trusted.
    for m in (warm / "memo" / "ideal").glob("*.npz"):
        m.write_bytes(b"not a memo")
    again, _ = run_stage(ideal.STAGE, params, tmp_path / "again", cache_dir=warm, inputs={"heads": changed})
    assert again["reused"] == 0 and doc("again") == doc("cold")
    shutil.rmtree(warm / "memo")
