"""The gradient machinery (pipeline.gradients): fast checks on a tiny random CNN, plus real-weight
checks with EfficientNet-Lite0 on real photos (marked slow)."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from pipeline.gradients import attacks, ideal, parameterization, regularizers, targets, transforms
from pipeline.gradients import model as model_lib
from tests import tiny_backbone


@pytest.fixture(scope="module")
def tiny():
    """The tiny random CNN backbone + its random ImageNet head, as a pixel-space model."""
    return model_lib.imagenet_model(tiny_backbone.make(0))


# ----------------------------------------------------------------------------- regularisers


def test_total_variation_known_images():
    s, c = 8, 3
    step = np.zeros((1, s, s, c), np.float32)
    step[:, :, s // 2:, :] = 1.0  # one vertical edge of height 1 in every row and channel
    checker = (np.indices((s, s)).sum(0) % 2).astype(np.float32)[None, :, :, None].repeat(c, -1)
    flat = np.full((1, s, s, c), 0.3, np.float32)
    tv = regularizers.total_variation(jnp.asarray(np.concatenate([step, checker, flat])))
    # S edge pixels per channel over 2 S (S - 1) neighbour pairs per channel.
    np.testing.assert_allclose(np.asarray(tv), [1 / (2 * (s - 1)), 1.0, 0.0], rtol=1e-6)


def test_l2_to_grey():
    x = jnp.stack([jnp.full((4, 4, 3), 0.5), jnp.zeros((4, 4, 3)), jnp.ones((4, 4, 3))])
    np.testing.assert_allclose(np.asarray(regularizers.l2_to_grey(x)), [0.0, 0.25, 0.25])


# ----------------------------------------------------------------------------- parameterisations


@pytest.mark.parametrize("size", [16, 15])
def test_fourier_round_trip(size):
    img = jax.random.uniform(jax.random.key(0), (2, size, size, 3), minval=3.0, maxval=252.0)
    z = jax.jit(parameterization.from_image, static_argnums=0)("fourier", img)
    assert z.shape == (2, 3, size, size // 2 + 1, 2)
    back = jax.jit(parameterization.render, static_argnums=(0, 2))("fourier", z, size)
    np.testing.assert_allclose(np.asarray(back), np.asarray(img), atol=2e-3)  # grey levels


def test_pixel_round_trip_and_projection():
    img = jax.random.uniform(jax.random.key(1), (1, 8, 8, 3), maxval=255.0)
    z = parameterization.from_image("pixel", img)
    np.testing.assert_allclose(np.asarray(parameterization.render("pixel", z, 8)), np.asarray(img), rtol=1e-6)
    assert float(parameterization.project("pixel", z + 5.0).max()) == 1.0


def test_fourier_init_is_faint_grey_and_spectrum_scale_is_1_over_f():
    z = parameterization.init("fourier", jax.random.key(0), 2, 32)
    img = np.asarray(parameterization.render("fourier", z, 32))
    assert abs(img.mean() - 127.5) < 3 and img.std() < 5
    scale = parameterization.spectrum_scale(32)
    assert scale[0, 0] == 32  # DC clamped to 1 / (1/S)
    np.testing.assert_allclose(scale[0, 4], 1 / (4 / 32))  # frequency 4/32 cycles per pixel
    assert np.isclose(np.linalg.norm(parameterization.COLOR_MATRIX, axis=0).max(), 1.0)


# ----------------------------------------------------------------------------- transforms


def test_zero_transform_is_identity():
    x = jax.random.uniform(jax.random.key(0), (2, 12, 12, 3))
    y = transforms.random_affine(jax.random.key(1), x, 0.0, 0.0, 0.0)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _bilinear_reference(image, angle, zoom):
    """Rotation + zoom about the centre by direct bilinear sampling (map_coordinates)."""
    h, w, _ = image.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = jnp.meshgrid(jnp.arange(h) - cy, jnp.arange(w) - cx, indexing="ij")
    src_y = (jnp.cos(angle) * yy - jnp.sin(angle) * xx) / zoom + cy
    src_x = (jnp.sin(angle) * yy + jnp.cos(angle) * xx) / zoom + cx
    return jax.vmap(lambda plane: jax.scipy.ndimage.map_coordinates(plane, [src_y, src_x], order=1),
                    in_axes=-1, out_axes=-1)(image)


def test_warp_matches_bilinear_resampling():
    s = 40
    yy, xx = np.mgrid[0:s, 0:s] / s
    img = jnp.asarray(np.stack([np.sin(2 * np.pi * (1.5 * yy + 0.5 * xx)), np.cos(4 * np.pi * xx), yy * xx], -1)
                      * 100 + 128, jnp.float32)[None]  # smooth: shears and direct sampling agree closely
    shifted = transforms.warp(img, jnp.array([[1.0, 0.0]]), jnp.ones(1), jnp.zeros(1))
    np.testing.assert_allclose(np.asarray(shifted[0, 1:]), np.asarray(img[0, :-1]), atol=1e-4)  # down a row
    for angle, zoom in [(0.15, 1.0), (-0.15, 1.1), (0.3, 0.9)]:  # radians; clockwise as displayed
        got = transforms.warp(img, jnp.zeros((1, 2)), jnp.array([zoom]), jnp.array([angle]))[0]
        want = _bilinear_reference(img[0], angle, zoom)
        inner = (slice(6, -6), slice(6, -6))  # away from the border, where the reference clamps
        # Three 1-D linear passes blur a little more than one bilinear lookup: measured <= 3.0 grey
        # levels on this +-100 pattern (which has 2 cycles across the image).
        assert float(jnp.abs(got - want)[inner].max()) < 4.0


def test_shear_gradient_is_the_exact_transpose():
    x = jax.random.normal(jax.random.key(0), (2, 3, 24, 24))
    g = jax.random.normal(jax.random.key(1), (2, 3, 24, 24))
    amount = jnp.array([0.13, -0.4])
    y, vjp = jax.vjp(lambda x: transforms._shear_rows(x, amount), x)
    np.testing.assert_allclose(float(jnp.sum(y * g)), float(jnp.sum(x * vjp(g)[0])), rtol=1e-5)


def test_zoom_resampling_gradient_is_the_exact_transpose_even_past_the_edges():
    # Zooms 0.5..2 with sources that run past both ends (edge rows repeated): the hand-written
    # gather-only VJP must equal autodiff's scatter-add transpose of the same linear map.
    def reference(x, src):
        p = x.shape[2]
        i0 = jnp.clip(jnp.floor(src), 0, p - 2).astype(jnp.int32)
        f = jnp.clip(src - i0, 0.0, 1.0)[:, None, :, None]
        take = jax.vmap(lambda img, idx: jnp.take(img, idx, axis=1))
        return (1.0 - f) * take(x, i0) + f * take(x, i0 + 1)

    rng = np.random.default_rng(0)
    for p, s, zoom, start in [(20, 30, (1.0, 2.0), (-3.0, 2.5)), (31, 17, (0.5, 1.37), (0.0, 25.2)),
                              (12, 40, (1.9, 0.8), (-30.0, 11.0)), (16, 16, (1.0, 1.0), (0.0, 0.0))]:
        src = jnp.asarray(np.asarray(start)[:, None] + np.arange(s)[None] / np.asarray(zoom)[:, None], jnp.float32)
        x = jnp.asarray(rng.normal(size=(2, 3, p, 5)), jnp.float32)
        g = jnp.asarray(rng.normal(size=(2, 3, s, 5)), jnp.float32)
        want, vjp_want = jax.vjp(lambda x: reference(x, src), x)
        got, vjp_got = jax.vjp(lambda x: transforms._resample_rows(x, src), x)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
        np.testing.assert_allclose(np.asarray(vjp_got(g)[0]), np.asarray(vjp_want(g)[0]), atol=2e-5)


def test_random_transforms_differ_per_key_and_stay_in_range():
    x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), maxval=255.0)
    a = transforms.random_affine(jax.random.key(1), x, 3.0, 0.1, 10.0)
    b = transforms.random_affine(jax.random.key(2), x, 3.0, 0.1, 10.0)
    assert not np.allclose(np.asarray(a), np.asarray(b))
    assert float(a.min()) >= 0.0 and float(a.max()) <= 255.0  # bilinear + reflect never overshoots


# ----------------------------------------------------------------------------- model helpers


def test_group_log_prob_sums_probabilities_within_domain():
    logits = jnp.array([[1.0, 2.0, 0.5, 3.0]])
    p = np.asarray(jax.nn.softmax(logits))[0]
    lp = model_lib.group_log_prob(logits, jnp.array([True, True, False, False]))
    np.testing.assert_allclose(np.exp(np.asarray(lp)), [p[0] + p[1]], rtol=1e-6)
    dom = jnp.array([True, True, True, False])  # softmax over the first three only (one head's segment)
    q = np.asarray(jax.nn.softmax(logits[:, :3]))[0]
    lp = model_lib.group_log_prob(logits, jnp.array([False, True, False, False]), dom)
    np.testing.assert_allclose(np.exp(np.asarray(lp)), [q[1]], rtol=1e-6)


# ----------------------------------------------------------------------------- ideal optimiser


def test_ideal_compiles_once_for_any_step_count_and_raises_the_target(tiny):
    masks = model_lib.class_mask([[3], [5, 6]], 1000)
    first = ideal.optimize(tiny, masks, ideal.IdealSettings(steps=20, lr=0.05, param="fourier", tv_weight=0.1,
                                                            jitter=2, scale=0.1, rotate=5), chunk=8)
    assert first.compiles == 1
    assert first.curve.shape == (20, 2) and first.images.shape == (2, 32, 32, 3) and first.images.dtype == np.uint8
    # More steps, other magnitudes (lr, TV, transforms are traced values): the same compiled code.
    again = ideal.optimize(tiny, masks, ideal.IdealSettings(steps=37, lr=0.1, param="fourier", tv_weight=0.0),
                           chunk=8)
    assert again.compiles == 0 and again.curve.shape == (37, 2)
    start = np.exp(first.curve[0])
    assert np.all(np.exp(first.log_prob) > start) and np.all(np.exp(again.log_prob) > start)
    np.testing.assert_allclose(first.tv, np.asarray(regularizers.total_variation(first.images / 255.0)), rtol=1e-5)


def test_ideal_pixel_param_and_sgd(tiny):
    masks = model_lib.class_mask([[7]], 1000)
    res = ideal.optimize(tiny, masks, ideal.IdealSettings(steps=6, lr=0.02, param="pixel", optimizer="sgd"), chunk=6)
    assert np.exp(res.log_prob[0]) > np.exp(res.curve[0, 0])


# ----------------------------------------------------------------------------- attacks


def test_attacks_return_uint8_inside_the_integer_ball(tiny):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    x[0] = 0  # clipping at the range ends must keep the bound too
    mask = np.zeros(1000, bool)
    mask[7] = True
    clean = attacks.target_prob(attacks.predict_logits(tiny, x), mask)
    for method, eps in [("fgsm", 2.0), ("pgd", 2.5), ("pgd", 3.0)]:
        adv = attacks.attack(tiny, x, mask, method, eps, steps=5, random_start=method == "pgd" and eps == 3.0)
        assert adv.dtype == np.uint8 and adv.shape == x.shape
        d = np.abs(adv.astype(int) - x.astype(int))
        assert d.max() <= int(np.floor(eps))  # exact integer check, after rounding
        assert np.all(attacks.target_prob(attacks.predict_logits(tiny, adv), mask) > clean)
    adv = attacks.attack(tiny, x, mask, "unbounded", 2.0, steps=5, lr=5.0)
    assert adv.dtype == np.uint8 and np.abs(adv.astype(int) - x.astype(int)).max() > 2


def test_distortion_metrics():
    x = np.full((2, 4, 4, 3), 100, np.uint8)
    y = x.copy()
    y[0] += 2
    d = attacks.distortion(x, y)
    np.testing.assert_allclose(d["psnr"][0], 10 * np.log10(255 ** 2 / 4))
    assert d["psnr"][1] == np.inf and d["linf"].tolist() == [2, 0]
    np.testing.assert_allclose(d["l2"][0], np.sqrt(48 * 4))


# ----------------------------------------------------------------------------- target specs

PETS = sorted(targets.PET_CAT_BREEDS | targets.PET_DOG_BREEDS)


def test_target_specs_resolve():
    heads = {"logreg": PETS}
    cat = targets.resolve("cat", "logreg", heads, "k")
    assert len(cat.indices) == 12 and {PETS[i] for i in cat.indices} == targets.PET_CAT_BREEDS
    assert len(targets.resolve("species:dog", "logreg", heads, "k").indices) == 25
    aby = targets.resolve("logreg:abyssinian", "imagenet", heads, "k")  # case-insensitive class name
    assert aby.indices == (PETS.index("Abyssinian"),) and aby.species == "cat"
    assert targets.resolve("cat", "logreg", {"logreg": ["cat", "dog"]}, "k").indices == (0,)
    assert targets.resolve("imagenet:cat", "logreg", heads, "k").indices == tuple(range(281, 286))
    assert targets.resolve("zebra", "imagenet", {}, "k").indices == (340,)
    assert targets.resolve(281, "imagenet", {}, "k").label == "tabby"
    assert targets.resolve_source("dog", ["cat", "dog"], "k").indices == (1,)


def test_bad_targets_name_the_key_and_near_matches():
    with pytest.raises(targets.TargetError, match=r"ideal.targets\[0\]: 'zebr'.*'zebra'"):
        targets.resolve("zebr", "imagenet", {}, "ideal.targets[0]")
    with pytest.raises(targets.TargetError, match=r"adversarial.target: 'Abysinian'.*'Abyssinian'"):
        targets.resolve("Abysinian", "logreg", {"logreg": PETS}, "adversarial.target")
    with pytest.raises(targets.TargetError, match=r"k: 'knn' is not a classifier"):
        targets.resolve("knn:cat", "imagenet", {"logreg": PETS}, "k")
    with pytest.raises(targets.TargetError, match="has no cat classes"):
        targets.resolve("cat", "logreg", {"logreg": ["apple", "pear"]}, "k")
    with pytest.raises(targets.TargetError, match="not a class of the dataset"):
        targets.resolve_source("wolf", ["cat", "dog"], "adversarial.source")


def test_ideal_logit_objective_ascends_the_logit_where_prob_would_not():
    """A 3-class model where brightness b raises the target's logit (10 b) but another class's
    twice as fast (20 b): the probability objective darkens the image (p(target) falls with b),
    the logit objective brightens it. Same start, same steps. (3 classes: a 2-class domain would
    be centred, see the next test.)"""
    import jax.numpy as jnp

    def apply(params, px):
        b = jnp.mean(px, axis=(1, 2, 3)) / 255.0
        return jnp.stack([10.0 * b, 20.0 * b, 0.0 * b], axis=1) * params

    toy = model_lib.PixelModel("toy", apply, jnp.float32(1.0), ("target", "other", "third"), 16)
    masks = model_lib.class_mask([[0]], 3)
    common = dict(steps=10, lr=0.02, param="pixel", tv_weight=0.0, seed=1)
    start = ideal.optimize(toy, masks, ideal.IdealSettings(objective="prob", **{**common, "steps": 1}), chunk=10)
    mean = {o: ideal.optimize(toy, masks, ideal.IdealSettings(objective=o, **common), chunk=10).images.mean()
            for o in ("prob", "logit")}
    assert mean["logit"] > start.images.mean() + 20 > mean["prob"] + 40, (mean, start.images.mean())
    with pytest.raises(ValueError, match="objective"):
        ideal.optimize(toy, masks, ideal.IdealSettings(objective="probability", **common))


def test_logit_objective_gives_class_0_of_a_binary_head_a_gradient():
    """Binary logistic heads output [0, z]: the centred logit of class 0 is -z/2, not a constant."""
    import jax
    import jax.numpy as jnp

    logits = jnp.array([[0.0, 3.0]])
    mask, domain = jnp.array([[True, False]]), jnp.array([[True, True]])
    g = jax.grad(lambda z: ideal._group_logit(z, mask, domain)[0])(logits)
    np.testing.assert_allclose(np.asarray(g), [[0.5, -0.5]])
    wide = jnp.ones((1, 1000), bool)  # ImageNet-sized domain: the raw logit
    g = jax.grad(lambda z: ideal._group_logit(z, jnp.arange(1000)[None] == 7, wide)[0])(jnp.zeros((1, 1000)))
    assert float(g[0, 7]) == 1.0 and float(jnp.abs(g).sum()) == 1.0
