"""Flax building blocks shared by the backbone families: padding, `Conv`, pixel normalisation,
BatchNorm folding and layer spans (the depthwise convolution is `pipeline.models.depthwise`).

Padding is always explicit, ``((top, bottom), (left, right))``, so both PyTorch-style symmetric
padding and TensorFlow/Keras ``'SAME'`` (asymmetric for stride 2: the extra row goes at the
bottom/right) can be expressed; `same_padding` computes the TF one.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Padding = tuple[tuple[int, int], tuple[int, int]]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding along one axis: output size ceil(size / stride).

    The total padding is split with the smaller half first (top/left), as TF and Keras do.

    Args:
      size: input length along the axis.
      kernel: kernel length.
      stride: stride.

    Returns:
      (before, after) padding.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def same_padding_2d(hw: Sequence[int], kernel: int, stride: int) -> Padding:
    """`same_padding` for both spatial axes of an (H, W) input."""
    return same_padding(hw[0], kernel, stride), same_padding(hw[1], kernel, stride)


class Conv(nn.Module):
    """Dense 2-D convolution with TF-'SAME' or explicit padding; params ``kernel`` (HWIO), ``bias``.

    Attributes:
      features: output channels.
      kernel_size: k (square kernel).
      stride: stride.
      padding: ``"SAME"`` (TensorFlow rule from the input shape) or ((top, bottom), (left, right)).
      use_bias: add a bias.
      dtype: computation dtype (None: the input's).
      param_dtype: parameter dtype.
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: str | Padding = "SAME"
    use_bias: bool = True
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (B, H, W, Cin) -> (B, Ho, Wo, features)."""
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features),
                            self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype) if self.use_bias else None
        dtype = self.dtype or x.dtype
        pad = same_padding_2d(x.shape[1:3], k, self.stride) if self.padding == "SAME" else self.padding
        if k == 1 and self.stride == 1 and not any(p for side in pad for p in side):
            # A pointwise conv is a matmul over channels. XLA:CPU runs it faster as a dot than as
            # a convolution, the most on few channels and large maps (measured per layer shape
            # of EfficientNet-Lite0); pointwise convs are most of a MobileNet's FLOPs.
            y = jax.lax.dot_general(x.astype(dtype), kernel[0, 0].astype(dtype),
                                    (((x.ndim - 1,), (0,)), ((), ())))   # (B, H, W, features)
        else:
            y = jax.lax.conv_general_dilated(x.astype(dtype), kernel.astype(dtype), (self.stride, self.stride),
                                             pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if bias is not None:
            y = y + bias.astype(dtype)
        return y


def normalize_pixels(pixels: jax.Array, normalization: str,
                     mean: Sequence[float] = (0.485, 0.456, 0.406),
                     std: Sequence[float] = (0.229, 0.224, 0.225)) -> jax.Array:
    """Map RGB pixels in [0, 255] to what a backbone expects (differentiable).

    Args:
      pixels: (B, H, W, 3) float RGB in [0, 255].
      normalization: ``mean_std`` ((x/255 - mean) / std), ``minus_one_one`` (x/127.5 - 1) or
        ``caffe`` (RGB->BGR, minus the ImageNet BGR mean on the 0..255 scale).
      mean, std: RGB constants on the [0, 1] scale, used by ``mean_std``.

    Returns:
      (B, H, W, 3) normalised input, same dtype as `pixels`.
    """
    if normalization == "mean_std":
        m = jnp.asarray(mean, pixels.dtype) * 255.0
        s = jnp.asarray(std, pixels.dtype) * 255.0
        return (pixels - m) / s
    if normalization == "minus_one_one":
        return pixels / 127.5 - 1.0
    if normalization == "caffe":
        bgr_mean = jnp.asarray((103.939, 116.779, 123.68), pixels.dtype)
        return pixels[..., ::-1] - bgr_mean
    raise ValueError(f"normalization {normalization!r} is not one of mean_std, minus_one_one, caffe")


def fold_batchnorm(kernel: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
                   var: np.ndarray, eps: float, bias: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Fold an inference BatchNorm that follows a conv into the conv's kernel and bias.

    y = gamma * (conv(x) + b - mean) / sqrt(var + eps) + beta
      = conv_with(kernel * scale)(x) + (b - mean) * scale + beta,  scale = gamma / sqrt(var + eps).
    Computed in float64 so folding adds no rounding beyond the final cast to float32.

    Args:
      kernel: conv kernel whose LAST axis is the output channel (Flax HWIO, or (k, k, 1, C)).
      gamma, beta, mean, var: (C,) BatchNorm weight, bias, running mean and variance.
      eps: BatchNorm epsilon.
      bias: optional (C,) conv bias.

    Returns:
      (kernel, bias) as float32.
    """
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    b = np.zeros_like(scale) if bias is None else bias.astype(np.float64)
    new_kernel = kernel.astype(np.float64) * scale
    new_bias = (b - mean.astype(np.float64)) * scale + beta.astype(np.float64)
    return new_kernel.astype(np.float32), new_bias.astype(np.float32)


def layer_span(names: Sequence[str], start: str | None, stop: str | None, where: str) -> frozenset[str]:
    """The layers a backbone module runs when cut: ``names[start:stop]`` by name, as a set.

    Families give their top-level layers in order (`layer_names`); a module built with
    ``start``/``stop`` runs only this slice, so trunk = ``stop=cut`` and top = ``start=cut``.

    Args:
      names: the family's layer names, in order.
      start: first layer to run (None: the first).
      stop: first layer NOT run (None: run to the end, pooling included).
      where: the backbone's name, for the error.

    Raises:
      ValueError: a name not in `names`, or an empty slice.
    """
    for n in (start, stop):
        if n is not None and n not in names:
            raise ValueError(f"{where}: no layer named {n!r}; layers are {', '.join(names)}")
    lo = 0 if start is None else list(names).index(start)
    hi = len(names) if stop is None else list(names).index(stop)
    if lo >= hi:
        raise ValueError(f"{where}: empty layer range start={start!r}, stop={stop!r}")
    return frozenset(names[lo:hi])
