"""Image parameterisations: what the ideal-image optimiser actually updates.

``pixel``: the image itself on the [0, 1] scale, clipped back into range after every update (the
lesson's plain gradient ascent). Every pixel is free, so high-frequency noise is as easy to
produce as an object, and the gradient of a CNN is mostly high-frequency.

``fourier``: the feature-visualisation parameterisation (Olah et al., "Feature Visualization",
Distill 2017; Mordvintsev et al., "Differentiable Image Parameterizations", Distill 2018). The
free variables are the real and imaginary parts of each colour channel's 2-D spectrum; each
frequency is scaled by 1/|f|^decay so that a unit step changes every frequency's *image*
energy about equally (natural images have a 1/f amplitude spectrum), an inverse real FFT gives
the image in a decorrelated colour space, a fixed 3x3 matrix maps it to RGB with the colour
correlations of natural images, and a sigmoid bounds it to [0, 1]. Gradient steps in this space
are preconditioned towards natural image statistics, which is what makes the result look like
texture of the class rather than adversarial noise.

Both expose ``init(key, batch, size) -> z``, ``render(z) -> (B, S, S, 3)`` in [0, 255], and an
inverse ``from_image(images) -> z`` (round trip tested).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Kind = Literal["pixel", "fourier"]
KINDS = ("pixel", "fourier")

# Square root of the RGB colour covariance of ImageNet photos (columns: decorrelated channels),
# the constant feature-visualisation work uses; normalised so its largest column norm is 1.
_COLOR_SQRT = np.asarray([[0.26, 0.09, 0.02],
                          [0.27, 0.00, -0.05],
                          [0.27, -0.09, 0.03]], np.float32)
COLOR_MATRIX = _COLOR_SQRT / np.max(np.linalg.norm(_COLOR_SQRT, axis=0))
# Dividing the inverse FFT output keeps the initial image near mid-grey (sigmoid(0) = 0.5).
_FFT_DAMP = 4.0
_INIT_SD = 0.01


def spectrum_scale(size: int, decay: float = 1.0) -> np.ndarray:
    """(S, S//2+1) per-frequency scale ~ 1/max(|f|, 1/S)^decay for an S x S real FFT.

    Normalised to the root-mean-square of the decay-1 scale, so `decay` changes the slope of the
    spectrum (how much of a step goes to coarse versus fine structure) but not the overall gain:
    without this, decay 1.5 multiplies the coarsest frequencies' step by ~15 and saturates the
    sigmoid.
    """
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    freq = np.maximum(np.sqrt(fx * fx + fy * fy), 1.0 / size)
    raw = 1.0 / freq ** decay
    ref = 1.0 / freq
    return (raw * np.sqrt(np.mean(ref ** 2) / np.mean(raw ** 2))).astype(np.float32)


def spectrum_scale_rows(size: int, decay: jax.Array) -> jax.Array:
    """`spectrum_scale` for a traced (B,) decay power: (B, S, S//2+1), one spectrum per image."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    log_freq = np.log(np.maximum(np.sqrt(fx * fx + fy * fy), 1.0 / size)).astype(np.float32)
    ref_ms = float(np.mean(np.exp(-2.0 * log_freq)))  # mean square of the decay-1 scale
    raw = jnp.exp(-decay[:, None, None] * jnp.asarray(log_freq))  # (B, S, S//2+1)
    return raw * jnp.sqrt(ref_ms / jnp.mean(raw * raw, axis=(1, 2), keepdims=True))


def init(kind: Kind, key: jax.Array, batch: int, size: int) -> jax.Array:
    """Initial free variables for `batch` images of `size` x `size`.

    Returns:
      pixel: (B, 3, S, S) uniform noise in [0.4, 0.6] (faint noise around grey, as the lesson starts
      from noise; channels first, like everything inside the optimiser);
      fourier: (B, 3, S, S//2+1, 2) small Gaussian spectrum (a faint grey image).
    """
    if kind == "pixel":
        return jax.random.uniform(key, (batch, 3, size, size), jnp.float32, 0.4, 0.6)
    if kind == "fourier":
        return _INIT_SD * jax.random.normal(key, (batch, 3, size, size // 2 + 1, 2), jnp.float32)
    raise ValueError(f"param: {kind!r} is not one of {', '.join(KINDS)}")


def render(kind: Kind, z: jax.Array, size: int, decay: float = 1.0) -> jax.Array:
    """Free variables -> (B, S, S, 3) float32 RGB in [0, 255] (differentiable)."""
    return jnp.transpose(render_nchw(kind, z, size, decay), (0, 2, 3, 1))


def render_nchw(kind: Kind, z: jax.Array, size: int, decay: float | jax.Array = 1.0) -> jax.Array:
    """Free variables -> (B, 3, S, S) float32 RGB in [0, 255], channels first (`decay`: a number,
    or a traced (B,) array of one decay power per image).

    The optimiser works channels-first up to the network input: the inverse FFT produces that
    layout, and the transforms resample along the last (contiguous) axis.
    """
    if kind == "pixel":
        return 255.0 * jnp.clip(z, 0.0, 1.0)
    if kind == "fourier":
        return 255.0 * jax.nn.sigmoid(_fourier_logits(z, size, decay))
    raise ValueError(f"param: {kind!r} is not one of {', '.join(KINDS)}")


def project(kind: Kind, z: jax.Array) -> jax.Array:
    """Keep the free variables valid after an update (clip pixels to [0, 1]; fourier is unbounded)."""
    return jnp.clip(z, 0.0, 1.0) if kind == "pixel" else z


def _fourier_logits(z: jax.Array, size: int, decay: float | jax.Array) -> jax.Array:
    """(B, 3, S, S//2+1, 2) spectrum -> (B, 3, S, S) pre-sigmoid RGB.

    Written to keep complex arithmetic to the one inverse FFT: the spectrum is scaled as two real
    planes, joined by `lax.complex`, and the 3 x 3 colour matrix (linear, so it commutes with the
    FFT) mixes the real output planes. Scaling and mixing the complex spectrum instead gave the
    same image but a gradient 4x slower on XLA:CPU (22 ms against 6 ms for 8 images at 224).
    """
    if isinstance(decay, (int, float)):
        scale = jnp.asarray(spectrum_scale(size, decay) / _FFT_DAMP)  # (S, S//2+1)
    else:  # a traced (B,) decay, one per image
        scale = spectrum_scale_rows(size, decay)[:, None] / _FFT_DAMP  # (B, 1, S, S//2+1)
    spectrum = jax.lax.complex(z[..., 0] * scale, z[..., 1] * scale)  # (B, 3, S, S//2+1), decorrelated
    planes = jnp.fft.irfft2(spectrum, s=(size, size), norm="ortho")  # (B, 3, S, S)
    m = COLOR_MATRIX
    return jnp.stack([sum(float(m[c, d]) * planes[:, d] for d in range(3)) for c in range(3)], axis=1)


def from_image(kind: Kind, images: jax.Array, decay: float = 1.0) -> jax.Array:
    """The free variables that render to `images` (inverse of `render`).

    Args:
      kind: parameterisation.
      images: (B, S, S, 3) in [0, 255]; for ``fourier`` strictly inside (0, 255) (sigmoid range).

    Returns:
      z with ``render(kind, z, S) == images`` up to float rounding (pixel: (B, 3, S, S) on [0, 1]).
    """
    x = jnp.transpose(jnp.asarray(images, jnp.float32) / 255.0, (0, 3, 1, 2))  # (B, 3, S, S)
    if kind == "pixel":
        return x
    size = x.shape[-1]
    logits = jnp.log(x) - jnp.log1p(-x)  # inverse sigmoid, (B, 3, S, S)
    decorrelated = jnp.einsum("dc,bchw->bdhw", jnp.asarray(np.linalg.inv(COLOR_MATRIX)), logits) * _FFT_DAMP
    spectrum = jnp.fft.rfft2(decorrelated, norm="ortho") / jnp.asarray(spectrum_scale(size, decay))
    return jnp.stack([spectrum.real, spectrum.imag], axis=-1).astype(jnp.float32)
