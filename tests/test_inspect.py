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
    for _ in range(150):
        x, y = _squares(rng, 64)
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
