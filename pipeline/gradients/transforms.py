"""Random geometric transforms applied to the image at every optimisation step (inside jit).

Transformation robustness (Olah et al. 2017): an image that stays the target class under small
random shifts, zooms and rotations cannot rely on a precise pattern of pixel noise, so the
optimiser builds larger, object-like structure. All three are folded into ONE affine resampling
per image (bilinear, reflected borders) with `jax.scipy.ndimage.map_coordinates`, so the cost is
one gather whatever is switched on, and zero magnitudes give back the input exactly (sampling at
integer coordinates). Magnitudes are traced values, not static: changing them does not recompile.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def random_affine(key: jax.Array, images: jax.Array, jitter: jax.Array | float,
                  scale: jax.Array | float, rotate: jax.Array | float) -> jax.Array:
    """Shift, zoom and rotate each image by independent random amounts.

    Args:
      key: PRNG key.
      images: (B, H, W, C).
      jitter: largest shift in pixels (uniform in [-jitter, jitter] per axis).
      scale: largest relative zoom (factor uniform in [1 - scale, 1 + scale]).
      rotate: largest rotation in degrees (uniform in [-rotate, rotate]).

    Returns:
      (B, H, W, C) transformed images, same dtype.
    """
    b, h, w, _ = images.shape
    k_shift, k_scale, k_rot = jax.random.split(key, 3)
    shift = jax.random.uniform(k_shift, (b, 2), minval=-1.0, maxval=1.0) * jitter  # (B, 2)
    zoom = 1.0 + jax.random.uniform(k_scale, (b,), minval=-1.0, maxval=1.0) * scale  # (B,)
    angle = jnp.deg2rad(jax.random.uniform(k_rot, (b,), minval=-1.0, maxval=1.0) * rotate)  # (B,)
    return jax.vmap(_warp)(images, shift, zoom, angle)


def _warp(image: jax.Array, shift: jax.Array, zoom: jax.Array, angle: jax.Array) -> jax.Array:
    """One image (H, W, C): output pixel p samples input at R(-angle) (p - c) / zoom + c - shift."""
    h, w, c = image.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy, jnp.arange(w, dtype=jnp.float32) - cx,
                          indexing="ij")  # (H, W) each
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    src_y = (cos * yy - sin * xx) / zoom + cy - shift[0]
    src_x = (sin * yy + cos * xx) / zoom + cx - shift[1]
    coords = jnp.stack([src_y, src_x])  # (2, H, W)

    def channel(plane: jax.Array) -> jax.Array:  # (H, W) -> (H, W)
        return jax.scipy.ndimage.map_coordinates(plane, list(coords), order=1, mode="reflect")

    return jax.vmap(channel, in_axes=-1, out_axes=-1)(image)
