"""Inspect: Grad-CAM where the answer is known, on real photos; the 2-D map; feature-map grids."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pipeline.inspect import gradcam as gc


class _Trunk(nn.Module):
    @nn.compact
    def __call__(self, x):                                       # (B, 32, 32, 3) in 0..255
        x = nn.relu(nn.Conv(16, (3, 3))(x / 127.5 - 1.0))        # (B, 32, 32, 16)
        return nn.relu(nn.Conv(16, (3, 3), strides=(2, 2))(x))   # (B, 16, 16, 16)


_RED, _BLUE = (220, 30, 30), (30, 30, 220)


def _squares(rng, n):
    """Grey-noise images with one 8x8 square, red (class 0) or blue (class 1), anywhere."""
    x = rng.uniform(60, 140, (n, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 2, n)
    for i in range(n):
        r, c = rng.integers(0, 25, 2)
        x[i, r:r + 8, c:c + 8] = _RED if y[i] == 0 else _BLUE
    return x, y


@pytest.fixture(scope="module")
def colour_cnn():
    """A small CNN (conv, conv, global average pool, dense) trained to tell a red square from a
    blue one. Which class a photo is depends only on where its square is, so Grad-CAM must find it."""
    import optax

    trunk_mod, rng = _Trunk(), np.random.default_rng(0)
    params = {"trunk": _Trunk().init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"],
              "w": jax.random.normal(jax.random.PRNGKey(1), (16, 2)) * 0.1, "b": jnp.zeros(2)}

    def trunk(p, pixels):
        return trunk_mod.apply({"params": p["trunk"]}, pixels)

    def top(p, a):                                               # a (B, 16, 16, 16)
        return a.mean(axis=(1, 2)) @ p["w"] + p["b"]             # (B, 2)

    opt = optax.adam(1e-2)

    @jax.jit
    def step(p, s, x, y):
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(top(p, trunk(p, x)), y).mean()
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s)
        return optax.apply_updates(p, u), s

    state = opt.init(params)
    for _ in range(100):
        x, y = _squares(rng, 48)
        params, state = step(params, state, jnp.asarray(x), jnp.asarray(y))
    x, y = _squares(rng, 256)
    acc = float((np.argmax(top(params, trunk(params, jnp.asarray(x))), -1) == y).mean())
    assert acc > 0.97, f"the tiny CNN did not learn the task (accuracy {acc:.2f}); the test below needs it"
    return trunk, top, params


def test_gradcam_lights_the_quadrant_that_holds_the_class(colour_cnn):
    """Each image: a red square in one quadrant and a blue one in the opposite quadrant. The CAM of
    'red' must put most of its mass in the red square's quadrant, 'blue' in the blue one's.
    Measure: share of the upsampled, [0, 1]-scaled map's sum inside the quadrant. Chance (a flat
    map) is 25%; a map that followed the wrong square would score ~0%."""
    trunk, top, params = colour_cnn
    rng = np.random.default_rng(1)
    corners = {0: (2, 2), 1: (2, 22), 2: (22, 2), 3: (22, 22)}   # TL, TR, BL, BR square origins
    quad = np.zeros((4, 32, 32), bool)
    quad[0, :16, :16] = quad[1, :16, 16:] = quad[2, 16:, :16] = quad[3, 16:, 16:] = True
    pixels, where = [], []
    for q in range(4):
        x = rng.uniform(60, 140, (32, 32, 3)).astype(np.float32)
        (r1, c1), (r2, c2) = corners[q], corners[3 - q]
        x[r1:r1 + 8, c1:c1 + 8], x[r2:r2 + 8, c2:c2 + 8] = _RED, _BLUE
        pixels.append(x)
        where.append((q, 3 - q))
    classes = np.tile([0, 1], (4, 1))                            # CAM of red and of blue, each image
    cams, logits = gc.gradcam(trunk, top, params, np.stack(pixels), classes, batch_size=3)  # padded batch
    assert cams.shape == (4, 2, 16, 16) and logits.shape == (4, 2)
    up = gc.upsample(cams, 32)
    for i, (q_red, q_blue) in enumerate(where):
        # Red's map: ~0.92 of its mass in the red square's quadrant; blue's is broader (~0.7: the net
        # also reads "no red anywhere" as blue) but still 3x chance. Neither map follows the other
        # square (<= ~6% there; chance 25%).
        assert gc.mass_inside(up[i, 0], quad[q_red]) > 0.8, (i, "red")
        assert gc.mass_inside(up[i, 1], quad[q_blue]) > 0.55, (i, "blue")
        assert gc.mass_inside(up[i, 0], quad[q_blue]) < 0.1 and gc.mass_inside(up[i, 1], quad[q_red]) < 0.1


def test_gradcam_matches_the_definition_computed_by_hand(colour_cnn):
    """alpha = spatial mean of d logit / dA; cam = ReLU(sum_k alpha_k A_k) (pytorch-grad-cam's)."""
    trunk, top, params = colour_cnn
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    classes = np.array([[1, 0], [0, 0]])
    cams, logits = gc.gradcam(trunk, top, params, pixels, classes)
    for b in range(2):
        a = trunk(params, jnp.asarray(pixels[b:b + 1]))
        for t in range(2):
            g = jax.grad(lambda x: top(params, x)[0, classes[b, t]])(a)[0]  # (8, 8, K)
            ref = np.maximum(0, np.einsum("hwk,k->hw", np.asarray(a[0]), np.asarray(g).mean(axis=(0, 1))))
            np.testing.assert_allclose(cams[b, t], ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(logits, np.asarray(top(params, trunk(params, jnp.asarray(pixels)))), rtol=1e-5)


# --- real photos, real weights -------------------------------------------------------------------

@pytest.fixture(scope="module")
def lite0():
    """efficientnet_lite0, the cats-dogs-dev world (data stage + a logreg head) and its test photos."""
    from pipeline.heads.trained import load_head
    from pipeline.inspect import steps
    from pipeline.models import registry
    from pipeline.sources import load_data
    from tests.gradient_fixtures import lite0_world

    w = lite0_world()
    ds = load_data(w.data)
    bb = registry.load_backbone("efficientnet_lite0", w.cache)
    rec = ds.splits["test"]
    pix = steps.load_photos(ds, [("test", i) for i in rec.ids], bb.spec)
    x = np.stack([pix[i] for i in rec.ids]).astype(np.float32)  # (N, 224, 224, 3) centre crops
    return bb, load_head(w.heads, "logreg"), x, np.asarray(rec.labels), w


@pytest.mark.slow
def test_cat_and_dog_gradcam_mass_lies_on_the_animal(lite0):
    """Two measures on cats-dogs-dev's test photos (10 cats, 10 dogs), CAM of the true class at
    the last map (head_conv, 7x7) through the trained logreg head:

    1. Centre crops: share of the map's mass inside the central box of half the crop's area (side
       1/sqrt(2)), where these photos put the animal. A flat map scores 0.50; measured median 0.65
       (lite0, float32). Threshold: median > 0.55 -- "mostly" inside, and above a flat map.
    2. Side by side: the middle half of a cat photo left, of a dog photo right (224 x 224). The
       cat's map must lie left, the dog's right. Chance 0.50, a map following the other animal
       < 0.5; measured medians 0.94 (cat) and 0.91 (dog). Threshold: median > 0.75 for each.
    """
    from pipeline.gradients import model as model_lib
    from pipeline.inspect import gradcam as gc
    from pipeline.inspect import steps

    bb, head, x, y, _ = lite0
    trunk, top, params, _ = steps.gradcam_model(bb, head, "head_conv")
    cams, logits = gc.gradcam(trunk, top, params, x, y[:, None], batch_size=10, centre=True)
    assert (logits.argmax(1) == y).mean() >= 0.9, "the head must be right for its maps to mean anything"
    # head(top(trunk(x))) is the function the gradient stages differentiate (gradients.model.head_model).
    ref = model_lib.head_model(bb, head, "logreg")
    np.testing.assert_allclose(logits, np.asarray(ref.apply(ref.params, jnp.asarray(x))), rtol=1e-4, atol=1e-4)
    assert cams.shape[2:] == (7, 7)
    up = gc.upsample(cams[:, 0], 224)
    side = int(round(224 / np.sqrt(2)))
    o = (224 - side) // 2
    centre = np.zeros((224, 224), bool)
    centre[o:o + side, o:o + side] = True
    shares = [gc.mass_inside(u, centre) for u in up]
    assert np.median(shares) > 0.55, np.round(shares, 2)

    cats, dogs = x[y == 0], x[y == 1]
    n = min(len(cats), len(dogs))
    pairs = np.concatenate([cats[:n, :, 56:168], dogs[:n, :, 56:168]], axis=2)  # cat | dog
    cams2, _ = gc.gradcam(trunk, top, params, pairs, np.tile([0, 1], (n, 1)), batch_size=10, centre=True)
    up2 = gc.upsample(cams2, 224)
    left = np.zeros((224, 224), bool)
    left[:, :112] = True
    cat_left = [gc.mass_inside(u, left) for u in up2[:, 0]]
    dog_right = [gc.mass_inside(u, ~left) for u in up2[:, 1]]
    assert np.median(cat_left) > 0.75 and np.median(dog_right) > 0.75, (np.round(cat_left, 2), np.round(dog_right, 2))


@pytest.mark.slow
def test_feature_map_grids_have_the_layers_real_channels_and_size(lite0, tmp_path):
    """Shapes checked against the Flax module's own intermediates (no cut involved)."""
    from PIL import Image

    from pipeline.inspect import steps

    bb, _, x, y, _ = lite0
    photos = [("test", f"p{i}", int(y[i])) for i in range(2)]
    pixels = {f"p{i}": x[i].astype(np.uint8) for i in range(2)}
    recs = steps.feature_maps(bb, ["block5", "head_conv"], photos, pixels, 16, tmp_path)
    norm = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    _, inter = jax.eval_shape(lambda v: bb.module.apply({"params": bb.params["features"]}, v,
                                                        capture_intermediates=True, mutable=["intermediates"]), norm)
    real = {"block5": inter["intermediates"]["block5"]["__call__"][0].shape[1:],
            "head_conv": (7, 7, 1280)}  # the 1x1 conv to 1280 channels at stride 32
    assert real["block5"] == (14, 14, 80) and len(recs) == 4
    for r in recs:
        assert tuple(r["shape"]) == tuple(real[r["layer"]]), r
        assert len(r["channels"]) == min(16, r["shape"][2]) and len(set(r["channels"])) == len(r["channels"])
        assert r["mean_activation"] == sorted(r["mean_activation"], reverse=True)  # most active first
        with Image.open(tmp_path / r["image"]) as im:
            tiles = len(r["channels"])
            grid_w = min(8, tiles) * (56 + 2) + 2
            assert im.size[0] > grid_w and im.size[1] == -(-tiles // 8) * (56 + 2) + 2


def test_layer_names_are_checked_with_the_nearest_names():
    from pipeline.errors import UserError
    from pipeline.inspect.params import InspectParams
    from pipeline.models import registry
    from stages import inspect as stage
    from tests.stage_helpers import section

    names = __import__("pipeline.models.cut", fromlist=["layer_names"]).layer_names(
        registry.get_spec("efficientnet_lite0"))
    p = section(InspectParams, "inspect", layers=["block3", "blok5"])
    with pytest.raises(UserError, match=r"inspect.layers\[1\].*'blok5'.*block5"):
        stage._layers(p, names, "efficientnet_lite0")
    with pytest.raises(UserError, match="inspect.gradcam_layer.*pool"):
        stage._layers(section(InspectParams, "inspect", gradcam_layer="pool"), names, "efficientnet_lite0")
    layers, cam = stage._layers(section(InspectParams, "inspect"), names, "efficientnet_lite0")
    assert cam == "head_conv" and len(layers) == 3 and layers[-1] == "head_conv"


def test_photos_param_rejects_a_bad_choice():
    from pipeline.inspect.params import InspectParams
    from pipeline.params import ParamsError
    from tests.stage_helpers import section

    with pytest.raises(ParamsError, match="photos: 'one_per_clas'"):
        section(InspectParams, "inspect", photos="one_per_clas")
    with pytest.raises(ParamsError, match="photos: 0"):
        section(InspectParams, "inspect", photos=0)
    assert section(InspectParams, "inspect", photos=["a.jpg"]).photos == ("a.jpg",)


# --- the 2-D map -----------------------------------------------------------------------------------

def test_map_is_deterministic_for_a_seed_and_keeps_clusters_apart():
    from pipeline.inspect import mapping

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 60)
    x = (rng.normal(0, 1, (4, 256))[labels] * 3 + rng.normal(0, 1, (240, 256))).astype(np.float32)
    a = mapping.embed_2d(x, "opentsne", seed=3)
    b = mapping.embed_2d(x, "opentsne", seed=3)
    c = mapping.embed_2d(x, "opentsne", seed=4)
    assert a.shape == (240, 2) and np.abs(a).max() == pytest.approx(1.0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Clusters stay apart: every point's nearest neighbour on the map has its label.
    d = ((a[:, None] - a[None]) ** 2).sum(-1) + np.eye(len(a)) * 1e9
    assert (labels[d.argmin(1)] == labels).mean() > 0.95


@pytest.mark.slow
def test_feature_maps_are_remembered_and_redrawn_the_same(lite0, tmp_path, monkeypatch):
    """Feature maps never read the head: with a cache they are remembered, and the second call
    draws the same files without running the backbone (a damaged memo is drawn again)."""
    from pipeline.inspect import steps

    bb, _, x, y, _ = lite0
    photos = [("test", f"p{i}", int(y[i])) for i in range(2)]
    pixels = {f"p{i}": x[i].astype(np.uint8) for i in range(2)}
    cache = tmp_path / "cache"
    first = steps.feature_maps(bb, ["block5"], photos, pixels, 8, tmp_path / "a", cache_dir=cache)
    computed = steps._feature_maps
    monkeypatch.setattr(steps, "_feature_maps", lambda *a, **k: pytest.fail("recomputed despite the memo"))
    again = steps.feature_maps(bb, ["block5"], photos, pixels, 8, tmp_path / "b", cache_dir=cache)
    assert again == first
    for r in first:
        assert (tmp_path / "a" / r["image"]).read_bytes() == (tmp_path / "b" / r["image"]).read_bytes()
    for m in (cache / "memo" / "inspect.featuremaps").glob("*.npz"):
        m.write_bytes(b"damaged")
    monkeypatch.setattr(steps, "_feature_maps", computed)
    assert steps.feature_maps(bb, ["block5"], photos, pixels, 8, tmp_path / "c", cache_dir=cache) == first


# --- the artifact --------------------------------------------------------------------------------

def _output(n_points: int = 3):
    from pipeline.inspect import artifact as a

    return a.InspectOutput(
        backbone="efficientnet_lite0", head="logreg", layers=["block3", "head_conv"], gradcam_layer="head_conv",
        feature_maps=[a.FeatureMapRecord(photo=0, id="cat/1.jpg", split="test", label=0, layer="block3",
                                         shape=[28, 28, 40], channels=[3, 1], mean_activation=[0.5, 0.25],
                                         image="featuremaps/00_block3.png")],
        gradcam=[a.GradcamRecord(id="dog/2.jpg", kind="mistake", true="dog", pred="cat", p_pred=0.9, p_true=None,
                                 p_pred_here=0.875, image="gradcam/00.png",
                                 panels=["photo", "CAM of cat", "CAM of dog"], cam_shape=[7, 7])],
        map=a.MapSummary(method="opentsne", points=n_points, splits=["test", "train"], mistakes=1, image="map.png"),
        seconds={"decode": 0.125, "map": 2.5},
        points=a.PointMapData(method="opentsne", seed=0, classes=["cat", "dog"], head="logreg",
                              ids=[f"p{i}" for i in range(n_points)], split=["test"] * n_points,
                              true=[i % 2 for i in range(n_points)], pred=[0] * n_points, p=[0.75] * n_points,
                              xy=[[0.1 * i, -0.2] for i in range(n_points)], pos=[[0.5, 0.25]] * n_points))


def test_the_artifact_reads_back_what_it_wrote_and_names_a_damaged_file(tmp_path):
    import json

    from pipeline.errors import UserError
    from pipeline.inspect import artifact

    assert artifact.read(tmp_path) is None and artifact.read(None) is None  # not run
    out = _output()
    artifact.write(tmp_path, out)
    assert artifact.read(tmp_path) == out
    doc = json.loads((tmp_path / "inspect.json").read_text())
    assert set(doc) == {"backbone", "head", "layers", "gradcam_layer", "feature_maps", "gradcam", "map", "seconds"}
    assert set(json.loads((tmp_path / "map.json").read_text())) == {
        "method", "seed", "classes", "head", "ids", "split", "true", "pred", "p", "xy", "pos"}

    def damaged(file: str, change) -> str:
        artifact.write(tmp_path, out)
        raw = json.loads((tmp_path / file).read_text())
        (tmp_path / file).write_text(change(raw) if callable(change) else change)
        with pytest.raises(UserError, match="rerun|Rerun") as err:
            artifact.read(tmp_path)
        assert str(tmp_path / file) in str(err.value) and "inspect" in str(err.value)
        return str(err.value)

    assert "gradcam" in damaged("inspect.json", lambda d: json.dumps({k: v for k, v in d.items() if k != "gradcam"}))
    assert "feature_maps[0].shape" in damaged(
        "inspect.json", lambda d: json.dumps({**d, "feature_maps": [{**d["feature_maps"][0], "shape": "28x28"}]}))
    damaged("inspect.json", "{not json")
    damaged("inspect.json", "[]")
    assert "xy" in damaged("map.json", lambda d: json.dumps({**d, "xy": d["xy"][:1]}))
    damaged("map.json", lambda d: json.dumps({**d, "true": [5] * len(d["true"])}))
    damaged("map.json", lambda d: json.dumps({k: v for k, v in d.items() if k != "pos"}))
    artifact.write(tmp_path, out)
    (tmp_path / "map.json").unlink()
    with pytest.raises(UserError, match="map.json: it is missing"):
        artifact.read(tmp_path)


def test_the_report_shows_an_inspect_output_built_by_the_writer(tmp_path):
    """A fake inspect folder, written through the artifact: the report's three sections read it."""
    from pipeline.inspect import artifact
    from pipeline.report import inspect_section
    from pipeline.report.common import Options
    from PIL import Image

    out = _output()
    for file in ["map.png"] + [r.image for r in out.feature_maps] + [r.image for r in out.gradcam]:
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / file)
    artifact.write(tmp_path, out)
    got = inspect_section.sections(tmp_path, Options())
    assert [s.id for s in got] == [i for i, _ in inspect_section.IDS]
    assert all(s.status != "not run" for s in got)
