"""The depthwise convolution of the backbone families, with an implementation chosen by backend.

XLA:CPU lowers a grouped convolution with ``feature_group_count == C`` to a slow generic loop,
while the same arithmetic written as k*k shifted multiply-adds over the padded input fuses into
one elementwise loop, an order of magnitude faster on CPU (`benchmarks/bench_backbones.py`;
docs/benchmarks.md). On GPU/TPU the native grouped convolution is the fast one.
``depthwise="auto"`` picks by backend.
"""

from __future__ import annotations

import functools
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from pipeline.models.layers import Padding, same_padding_2d

DepthwiseImpl = Literal["auto", "xla", "shifted"]
DEPTHWISE_IMPLS = ("auto", "xla", "shifted")


def resolve_depthwise(impl: str) -> Literal["xla", "shifted"]:
    """Turn ``"auto"`` into the implementation that is fast on the current default backend.

    Args:
      impl: ``"auto"``, ``"xla"`` or ``"shifted"``.

    Returns:
      ``"shifted"`` on CPU for ``"auto"``, ``"xla"`` on GPU/TPU; other values unchanged.
    """
    if impl not in DEPTHWISE_IMPLS:
        raise ValueError(f"depthwise: {impl!r} is not allowed; choose one of {', '.join(DEPTHWISE_IMPLS)}")
    if impl == "auto":
        return "shifted" if jax.default_backend() == "cpu" else "xla"
    return impl  # type: ignore[return-value]


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding,
                   impl: Literal["xla", "shifted"]) -> jax.Array:
    """Depthwise 2-D convolution (one k x k filter per channel), no bias.

    Args:
      x: (B, H, W, C) input.
      kernel: (k, k, 1, C) filters (Flax HWIO layout with one input channel per group).
      stride: 1 or 2 (any positive integer works).
      padding: ((top, bottom), (left, right)) zero padding.
      impl: ``"xla"`` (grouped `lax.conv_general_dilated`) or ``"shifted"`` (sum of k*k shifted
        multiply-adds; same arithmetic, fast on XLA:CPU).

    Returns:
      (B, Ho, Wo, C) with Ho = (H + top + bottom - k) // stride + 1 (same for Wo).
    """
    kh, kw, one, c = kernel.shape
    if one != 1 or x.shape[-1] != c:
        raise ValueError(f"depthwise kernel {kernel.shape} does not match input channels {x.shape[-1]}")
    if impl == "xla":
        return jax.lax.conv_general_dilated(
            x, kernel, window_strides=(stride, stride), padding=padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)
    if impl != "shifted":
        raise ValueError(f"depthwise impl {impl!r} is not 'xla' or 'shifted' (resolve 'auto' first)")
    padding = tuple((int(p[0]), int(p[1])) for p in padding)  # hashable: a static argument below
    return _shifted_depthwise(x, kernel, int(stride), padding)


def _shifted_sum(xp: jax.Array, w: jax.Array, stride: int, ho: int, wo: int) -> jax.Array:
    """sum_{i,j} xp[:, i + s*h, j + s*w, :] * w[i, j] over an already padded input.

    Args:
      xp: (B, Hp, Wp, C) padded input.
      w: (k, k, C) filters, already in the accumulation dtype.
      stride: s.
      ho, wo: output size.

    Returns:
      (B, ho, wo, C) in w's dtype.
    """
    kh, kw, c = w.shape
    out = None
    for i in range(kh):
        for j in range(kw):
            patch = jax.lax.slice(xp, (0, i, j, 0),
                                  (xp.shape[0], i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c),
                                  (1, stride, stride, 1))  # (B, Ho, Wo, C)
            term = patch.astype(w.dtype) * w[i, j]
            out = term if out is None else out + term
    return out


# The shifted form has a hand-written VJP. Autodiff of k*k strided slices transposes each slice
# into a full-size padded tensor and adds k*k of them, which on XLA:CPU made the input gradient of
# EfficientNet-Lite0 ~5x its forward pass. The input gradient of a depthwise conv is itself a
# depthwise conv (of the stride-dilated, padded cotangent with the flipped kernel), so it reuses
# `_shifted_sum` and costs about one forward pass; the ideal-image and attack stages
# differentiate through every depthwise layer at every step. Results equal autodiff's exactly.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shifted_depthwise(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    kh, kw, _, _ = kernel.shape
    (pt, pb), (pl, pr) = padding
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))  # (B, H+pt+pb, W+pl+pr, C)
    ho = (xp.shape[1] - kh) // stride + 1
    wo = (xp.shape[2] - kw) // stride + 1
    # Accumulate in float32 even for bf16 inputs: k*k terms in bf16 lose ~3 bits.
    acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
    return _shifted_sum(xp, kernel[:, :, 0, :].astype(acc_dtype), stride, ho, wo).astype(x.dtype)


def _shifted_depthwise_fwd(x, kernel, stride, padding):
    return _shifted_depthwise(x, kernel, stride, padding), (x, kernel)


def _shifted_depthwise_bwd(stride, padding, residuals, g):
    x, kernel = residuals
    kh, kw, _, c = kernel.shape
    (pt, pb), (pl, pr) = padding
    hp, wp = x.shape[1] + pt + pb, x.shape[2] + pl + pr
    ho, wo = g.shape[1], g.shape[2]
    acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
    # d(xp)[p] = sum_{i,j} g[(p - i) / s] w[i, j]: dilate g by the stride (zeros between rows and
    # columns), pad by k - 1 (plus the rows/cols the forward never reached), correlate with the
    # flipped kernel at stride 1.
    extra_h, extra_w = hp - ((ho - 1) * stride + kh), wp - ((wo - 1) * stride + kw)
    gd = jax.lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), (kh - 1, kh - 1 + extra_h, stride - 1),
                                                 (kw - 1, kw - 1 + extra_w, stride - 1), (0, 0, 0)))
    dxp = _shifted_sum(gd, kernel[::-1, ::-1, 0, :].astype(acc_dtype), 1, hp, wp)  # (B, Hp, Wp, C)
    dx = dxp[:, pt:pt + x.shape[1], pl:pl + x.shape[2], :].astype(x.dtype)
    # Kernel gradient (dead code under jit when only the input gradient is used).
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))).astype(acc_dtype)
    ga = g.astype(acc_dtype)
    taps = [jnp.sum(jax.lax.slice(xp, (0, i, j, 0),
                                  (xp.shape[0], i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c),
                                  (1, stride, stride, 1)) * ga, axis=(0, 1, 2))
            for i in range(kh) for j in range(kw)]
    dk = jnp.stack(taps).reshape(kh, kw, 1, c).astype(kernel.dtype)
    return dx, dk


_shifted_depthwise.defvjp(_shifted_depthwise_fwd, _shifted_depthwise_bwd)


class DepthwiseConv(nn.Module):
    """Depthwise convolution layer with a selectable implementation.

    Attributes:
      kernel_size: k (square kernel).
      stride: 1 or 2.
      padding: ``"SAME"`` (TensorFlow rule, computed from the input shape at trace time) or
        explicit ((top, bottom), (left, right)).
      use_bias: add a per-channel bias.
      depthwise: ``"auto"``, ``"xla"`` or ``"shifted"`` (see module docstring).
      dtype: computation dtype (None: the input's).
      param_dtype: parameter dtype.
    """

    kernel_size: int
    stride: int = 1
    padding: str | Padding = "SAME"
    use_bias: bool = True
    depthwise: DepthwiseImpl = "auto"
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (B, H, W, C) -> (B, Ho, Wo, C)."""
        c = x.shape[-1]
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, c), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype) if self.use_bias else None
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        pad = same_padding_2d(x.shape[1:3], k, self.stride) if self.padding == "SAME" else self.padding
        y = depthwise_conv(x, kernel.astype(dtype), self.stride, pad, resolve_depthwise(self.depthwise))
        if bias is not None:
            y = y + bias.astype(dtype)
        return y
