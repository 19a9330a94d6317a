"""Grad-CAM (Selvaraju et al. 2017) over a backbone cut into ``trunk`` and ``top``.

Definition (the one `pytorch-grad-cam` implements, ``GradCAM`` with ``ClassifierOutputTarget``):
for a class c with logit y_c and the chosen layer's activation A (h, w, K),

    alpha_k = mean_{i,j} dy_c / dA_ijk            (channel weights: spatially averaged gradients)
    cam_ij  = ReLU(sum_k alpha_k A_ijk)           (h, w)

then each map is scaled to [0, 1] (minus its min, over its max) and upsampled bilinearly to the
image. The score is the class *logit*, not its probability, as in the paper and that package.

``centre=True`` scores the logit minus the mean logit instead. Softmax logits are defined only up
to a constant per image, and a binary logistic head fixes class 0's logit at 0 (its gradient, and
so its map, would be empty): centred, class 0 scores -z/2 and class 1 +z/2, the two sides of the
one decision. The stage centres only 2-class heads; with more classes it is the package's score.

The model is given as two pure functions, so any backbone that can be split at a layer works:

    trunk(params, pixels (B, S, S, 3) float 0..255) -> activation (B, h, w, K)
    top(params, activation) -> logits (B, C)       (rest of the backbone + a head)

`make_gradcam` returns one jitted function that takes a batch of images and T classes per image
(e.g. predicted and true) and returns all B x T maps from one forward pass and one batched VJP.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

Trunk = Callable[[Any, jax.Array], jax.Array]
Top = Callable[[Any, jax.Array], jax.Array]


def cam_from_gradients(activation: jax.Array, grads: jax.Array) -> jax.Array:
    """ReLU of the gradient-weighted channel sum.

    Args:
      activation: (..., h, w, K) the layer's output.
      grads: (..., h, w, K) d(class logit)/d(activation), same shape.

    Returns:
      (..., h, w) float32 maps, not normalised.
    """
    weights = jnp.mean(grads, axis=(-3, -2))  # (..., K)
    return jax.nn.relu(jnp.einsum("...hwk,...k->...hw", activation, weights))


def normalise(cams: jax.Array) -> jax.Array:
    """Scale each (h, w) map to [0, 1]: minus its min, over its max (a flat map stays 0)."""
    lo = jnp.min(cams, axis=(-2, -1), keepdims=True)
    c = cams - lo
    return c / (1e-7 + jnp.max(c, axis=(-2, -1), keepdims=True))


@functools.cache
def make_gradcam(trunk: Trunk, top: Top, centre: bool = False
                 ) -> Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """One jitted Grad-CAM function for a (trunk, top) pair (cached by the pair's identity).

    Args:
      trunk, top: the split model.
      centre: score logit - mean logit (see the module docstring) instead of the raw logit.

    Returns:
      ``fn(params, pixels (B, S, S, 3), classes (B, T) int) -> (cams (B, T, h, w), logits (B, C))``;
      cams are raw (`cam_from_gradients`), at the layer's resolution. Use `upsample` for overlays.
    """

    def fn(params: Any, pixels: jax.Array, classes: jax.Array) -> tuple[jax.Array, jax.Array]:
        act = trunk(params, pixels).astype(jnp.float32)  # (B, h, w, K)
        def scores(a):
            z = top(params, a).astype(jnp.float32)  # (B, C)
            return (z - jnp.mean(z, axis=-1, keepdims=True) if centre else z), z

        s, vjp, logits = jax.vjp(scores, act, has_aux=True)  # (B, C) each
        # One cotangent per requested class: (T, B, C) one-hots; vmap the VJP over T.
        cot = jax.nn.one_hot(classes.T, s.shape[-1], dtype=s.dtype)
        (grads,) = jax.vmap(vjp)(cot)  # (T, B, h, w, K)
        cams = cam_from_gradients(act[None], grads)  # (T, B, h, w)
        return jnp.swapaxes(cams, 0, 1), logits

    return jax.jit(fn)


def upsample(cams: np.ndarray | jax.Array, size: int) -> np.ndarray:
    """Normalise each map to [0, 1] and resize it bilinearly to (size, size).

    Args:
      cams: (..., h, w).

    Returns:
      (..., size, size) float32 in [0, 1].
    """
    c = normalise(jnp.asarray(cams, jnp.float32))
    out = jax.image.resize(c, c.shape[:-2] + (size, size), method="bilinear")
    return np.clip(np.asarray(out), 0.0, 1.0)


def gradcam(trunk: Trunk, top: Top, params: Any, pixels: np.ndarray, classes: np.ndarray,
            batch_size: int = 16, centre: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps for many images, in fixed-size batches (one compile for any count).

    Args:
      trunk, top: the split model (see the module docstring).
      params: what both take.
      pixels: (N, S, S, 3) float32 0..255.
      classes: (N, T) int class indices per image (e.g. [predicted, true]).
      batch_size: images per call; the last batch is padded (padded rows are dropped).
      centre: see `make_gradcam`.

    Returns:
      (cams (N, T, h, w) float32 raw maps, logits (N, C) float32).
    """
    fn = make_gradcam(trunk, top, centre)
    n = len(pixels)
    classes = np.asarray(classes, np.int32).reshape(n, -1)
    cams, logits = [], []
    for i in range(0, n, batch_size):
        x, c = pixels[i:i + batch_size], classes[i:i + batch_size]
        pad = batch_size - len(x)
        if pad:
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
            c = np.concatenate([c, np.zeros((pad,) + c.shape[1:], c.dtype)])
        cm, lg = fn(params, jnp.asarray(x, jnp.float32), jnp.asarray(c))
        cams.append(np.asarray(cm)[:batch_size - pad])
        logits.append(np.asarray(lg)[:batch_size - pad])
    return np.concatenate(cams), np.concatenate(logits)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] map (S, S) over an (S, S, 3) uint8 photo with the 'jet' colour map."""
    from matplotlib import colormaps

    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255.0  # (S, S, 3)
    return np.clip((1 - alpha) * image.astype(np.float32) + alpha * heat, 0, 255).astype(np.uint8)


def mass_inside(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of a map's total mass that lies where `mask` is true (both (S, S))."""
    total = float(np.sum(cam))
    return float(np.sum(cam * mask)) / total if total > 0 else 0.0
