"""Random geometric transforms applied to the image at every optimisation step (inside jit).

Transformation robustness (Olah et al. 2017): an image that stays the target class under small
random shifts, zooms and rotations cannot rely on a precise pattern of pixel noise, so the
optimiser builds larger, object-like structure.

How, and why this way: the obvious implementation, one bilinear `map_coordinates` resampling per
image, gathers single pixels, and the gradient of that is a per-pixel scatter-add, which XLA:CPU
runs serially: for MobileNetV2 on 8 images at 224 it doubled the cost of an ideal-image step
(dense interpolation matmuls and FFT shears were not much cheaper). Here every resampling is
one-dimensional and moves whole rows (or whole row windows), so gathers and their scatter-add
gradients copy contiguous blocks:

1. reflect-pad the image by S/8 pixels (so that rotating does not pull content across the
   border; enough for the corners of a 10-degree turn);
2. rotate by three shears (Paeth 1986): x-shear -tan(θ/2), y-shear sin θ, x-shear -tan(θ/2),
   each a per-row (per-column, on the transpose) sub-pixel shift with linear interpolation;
3. zoom, shift and crop back to S x S separably: rows, then columns, each output line a linear
   blend of two input lines.

Zero magnitudes return the input exactly. Magnitudes are traced values, not static: changing
them does not recompile.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MAX_ROTATE = 45.0  # degrees; three shears stay accurate to 90, but larger angles wrap corners


def random_affine(key: jax.Array, images: jax.Array, jitter: jax.Array | float,
                  scale: jax.Array | float, rotate: jax.Array | float, channels_first: bool = False) -> jax.Array:
    """Shift, zoom and rotate each image by independent random amounts.

    Args:
      key: PRNG key.
      images: (B, S, S, C), square; (B, C, S, S) with `channels_first` (no transposes then).
      jitter: largest shift in pixels (uniform in [-jitter, jitter] per axis).
      scale: largest relative zoom (factor uniform in [1 - scale, 1 + scale]).
      rotate: largest rotation in degrees (uniform in [-rotate, rotate]; at most `MAX_ROTATE`).

    Returns:
      (B, S, S, C) transformed images, same dtype.
    """
    b = images.shape[0]
    k_shift, k_scale, k_rot = jax.random.split(key, 3)
    shift = jax.random.uniform(k_shift, (b, 2), minval=-1.0, maxval=1.0) * jitter  # (B, 2)
    zoom = 1.0 + jax.random.uniform(k_scale, (b,), minval=-1.0, maxval=1.0) * scale  # (B,)
    angle = jnp.deg2rad(jax.random.uniform(k_rot, (b,), minval=-1.0, maxval=1.0) * rotate)  # (B,)
    if channels_first:
        return warp_nchw(images, shift, zoom, angle)
    return jnp.transpose(warp_nchw(jnp.transpose(images, (0, 3, 1, 2)), shift, zoom, angle), (0, 2, 3, 1))


def warp(images: jax.Array, shift: jax.Array, zoom: jax.Array, angle: jax.Array) -> jax.Array:
    """Rotate by `angle` (radians, clockwise as displayed), zoom by `zoom` about the centre, then
    shift by `shift` (rows, columns) pixels.

    Args:
      images: (B, S, S, C).
      shift: (B, 2).
      zoom: (B,).
      angle: (B,).

    Returns:
      (B, S, S, C).
    """
    return jnp.transpose(warp_nchw(jnp.transpose(images, (0, 3, 1, 2)), shift, zoom, angle), (0, 2, 3, 1))


def warp_nchw(images: jax.Array, shift: jax.Array, zoom: jax.Array, angle: jax.Array) -> jax.Array:
    """`warp` for channels-first (B, C, S, S) images; every resampling runs along the last axis."""
    b, c, s, s2 = images.shape
    if s != s2:
        raise ValueError(f"transforms need square images, got {images.shape}")
    pad = max(4, s // 8)  # covers the corners of a 10-degree rotation
    x = jnp.pad(images.astype(jnp.float32), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")
    # Skip the shears when no image of the batch is rotated (a recipe without rotation).
    x = jax.lax.cond(jnp.any(angle != 0), _rotate, lambda x, a: x, x, angle)  # (B, C, P, P)
    return _zoom_shift_crop(x, zoom, shift, s, pad).astype(images.dtype)  # (B, C, S, S)


@jax.custom_vjp
def _shear_rows(x: jax.Array, amount: jax.Array) -> jax.Array:
    """Shift row r of each (P, P) plane sideways by amount * (r - centre) pixels, linear interpolation.

    Each row is cut out of a zero-padded copy at its own integer offset (a gather of whole row
    windows) and blended with its one-pixel neighbour window by the fractional part. (A barrel
    shifter of static shifts and selects was ~8x slower on XLA:CPU.) The gradient is the same
    shear with the opposite amount, which is this linear map's exact transpose (zeros enter at
    both ends), and so again a gather, not a scatter-add. There is no gradient with respect to
    `amount` (the transforms are random draws, never optimised).

    Args:
      x: (B, C, P, P).
      amount: (B,) shear factor, |amount| <= sin(MAX_ROTATE).
    """
    p = x.shape[-1]
    margin = int(np.ceil(np.sin(np.deg2rad(MAX_ROTATE)) * p / 2)) + 2  # largest |shift| + 2
    lines = jnp.arange(p, dtype=jnp.float32) - (p - 1) / 2.0  # (P,) row offsets from the centre
    shifts = jnp.clip(amount[:, None] * lines[None, :], 1 - margin, margin - 1)  # (B, P)
    k = jnp.floor(shifts)
    f = (shifts - k)[:, None, :, None]  # (B, 1, P, 1)
    xp = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (margin, margin)))  # (B, C, P, P + 2 margin)
    start = (margin - 1 - k).astype(jnp.int32)  # window[j] = row[j - k - 1]

    def window(row, s):  # (P + 2 margin,) -> (P + 1,)
        return jax.lax.dynamic_slice(row, (s,), (p + 1,))

    per_row = jax.vmap(window, in_axes=(0, 0))  # over rows
    w = jax.vmap(jax.vmap(per_row, in_axes=(0, None)), in_axes=(0, 0))(xp, start)  # (B, C, P, P + 1)
    return (1.0 - f) * w[..., 1:] + f * w[..., :-1]  # out[x] = (1-f) in[x-k] + f in[x-k-1]


def _shear_rows_fwd(x, amount):
    return _shear_rows(x, amount), amount


def _shear_rows_bwd(amount, g):
    return _shear_rows(g, -amount), jnp.zeros_like(amount)


_shear_rows.defvjp(_shear_rows_fwd, _shear_rows_bwd)


def _rotate(x: jax.Array, angle: jax.Array) -> jax.Array:
    """Three-shear rotation of (B, C, P, P) about the centre; the y-shear runs on the transpose."""
    a = -jnp.tan(angle / 2.0)
    x = _shear_rows(x, a)
    x = jnp.swapaxes(_shear_rows(jnp.swapaxes(x, -1, -2), jnp.sin(angle)), -1, -2)
    return _shear_rows(x, a)


def _row_weights(src: jax.Array, p: int):
    """(i0, f): output row o = (1 - f[o]) * row i0[o] + f[o] * row i0[o] + 1 (clamped at the ends)."""
    i0 = jnp.clip(jnp.floor(src), 0, p - 2).astype(jnp.int32)  # (B, S)
    return i0, jnp.clip(src - i0, 0.0, 1.0)


_take_rows = jax.vmap(lambda img, idx: jnp.take(img, idx, axis=1))  # (B, C, P, Q), (B, S) -> (B, C, S, Q)
_MAX_PER_ROW = 3  # outputs whose two-row window can start at one input row, for zoom <= 2


@jax.custom_vjp
def _resample_rows(x: jax.Array, src: jax.Array) -> jax.Array:
    """Output row o = input row at (fractional) position src[b, o], linear interpolation.

    The gradient is written out as gathers too (`_resample_rows_bwd`): autodiff's transpose of
    `take` is a scatter-add, which XLA:CPU runs serially, and that was 7 ms of each of the two
    zoom passes of an ideal-image step (8 images at 224) against 0.3 ms for the gather.

    Args:
      x: (B, C, P, Q).
      src: (B, S) source row coordinates, increasing along S by at least 1/2 row per output row
        (a zoom of at most 2); outside [0, P - 1] they repeat the edge row.

    Returns:
      (B, C, S, Q).
    """
    i0, f = _row_weights(src, x.shape[2])
    f = f[:, None, :, None]  # (B, 1, S, 1)
    return (1.0 - f) * _take_rows(x, i0) + f * _take_rows(x, i0 + 1)


def _resample_rows_fwd(x, src):
    return _resample_rows(x, src), (src, x.shape[2])


def _resample_rows_bwd(res, g):
    """Input row r collects (1 - f) g from the outputs whose window starts at r and f g from those
    whose window starts at r - 1. src increases, so each set is a run of consecutive outputs: at
    most `_MAX_PER_ROW` inside the image, found by a search and gathered; the outputs clamped to
    an edge row (src outside [0, P - 1], any number of them) are summed separately.
    """
    src, p = res
    s = src.shape[1]
    i0, f = _row_weights(src, p)
    low, high = src < 0, src > p - 1  # clamped: row 0 resp. row P - 1 with weight 1
    inside = ~(low | high)
    rows = jnp.arange(p, dtype=jnp.int32)
    # first inside output whose window starts at or after row r: (B, P)
    key = jnp.where(inside, i0, jnp.where(low, -1, p))  # still increasing along S
    first = jax.vmap(lambda k: jnp.searchsorted(k, rows, side="left", method="compare_all"))(key)
    a = jnp.where(inside, 1.0 - f, 0.0)  # (B, S) weight onto row i0
    c = jnp.where(inside, f, 0.0)  # weight onto row i0 + 1
    gx = jnp.zeros(g.shape[:2] + (p, g.shape[3]), g.dtype)
    for k in range(_MAX_PER_ROW):
        o = jnp.minimum(first + k, s - 1)  # (B, P) candidate outputs starting at row r
        hit = (first + k < s) & (jnp.take_along_axis(i0, o, axis=1) == rows)  # window starts at r
        wa = jnp.where(hit, jnp.take_along_axis(a, o, axis=1), 0.0)  # (B, P)
        wc = jnp.where(hit, jnp.take_along_axis(c, o, axis=1), 0.0)
        go = _take_rows(g, o)  # (B, C, P, Q)
        gx = gx + wa[:, None, :, None] * go
        # the same outputs give f * g to the next row: shift down by one
        gx = gx.at[:, :, 1:].add(wc[:, None, :-1, None] * go[:, :, :-1])
    ends = jnp.stack([jnp.sum(jnp.where(low[:, None, :, None], g, 0.0), axis=2),
                      jnp.sum(jnp.where(high[:, None, :, None], g, 0.0), axis=2)], axis=2)  # (B, C, 2, Q)
    gx = gx.at[:, :, 0].add(ends[:, :, 0]).at[:, :, p - 1].add(ends[:, :, 1])
    return gx, jnp.zeros_like(src)


_resample_rows.defvjp(_resample_rows_fwd, _resample_rows_bwd)


def _zoom_shift_crop(x: jax.Array, zoom: jax.Array, shift: jax.Array, size: int, pad: int) -> jax.Array:
    """(B, C, P, P) padded -> (B, C, S, S): zoom about the centre, shift, crop (rows, then columns)."""
    c = (size - 1) / 2.0
    o = jnp.arange(size, dtype=jnp.float32)
    src_y = (o[None, :] - c) / zoom[:, None] + c + pad - shift[:, :1]  # (B, S)
    src_x = (o[None, :] - c) / zoom[:, None] + c + pad - shift[:, 1:]  # (B, S)
    y = _resample_rows(x, src_y)  # (B, C, S, P)
    y = _resample_rows(jnp.swapaxes(y, -1, -2), src_x)  # (B, C, S(cols), S(rows))
    return jnp.swapaxes(y, -1, -2)
