"""MobileNetV2 (Sandler et al. 2018) exactly as Keras Applications builds it, in Flax.

Keras details that matter for parity with its weights:
- A stride-2 depthwise conv is preceded by ``ZeroPadding2D(correct_pad(x, 3))`` and is VALID:
  (0, 1) rows/cols for an even input size (the extra row at the bottom/right, like TF 'SAME'),
  (1, 1) for an odd one. `correct_pad` reproduces it and is passed to `DepthwiseConv` as explicit
  padding; stride-1 depthwise convs pad (1, 1) ('SAME').
- ``Conv1`` is a 3x3 stride-2 'SAME' conv (TF rule: asymmetric for even sizes).
- ReLU6 after the expand and depthwise convs, none after the projection (linear bottleneck);
  the residual add only where input and output shapes agree. BatchNorm epsilon 1e-3.
- The last 1x1 conv has 1280 channels for alpha <= 1 (the paper does not scale it down).

The backbone is frozen, so BatchNorm is folded into the preceding conv at conversion time
(`pipeline.models.layers.fold_batchnorm`); every conv then has a bias. Depthwise convs use
`pipeline.models.depthwise.DepthwiseConv`, whose ``depthwise`` setting picks XLA's grouped conv
("xla", fast on GPU/TPU) or shifted multiply-adds ("shifted", ~10x faster on XLA:CPU).

Features are the global average of ``out_relu`` (1280-d), on which the ImageNet head
(``predictions``, a dense layer) sits. Variants are data: ``spec.config["alpha"]`` is the width
multiplier (1.0 here); the block table `BLOCKS` is the paper's Table 2. Parameter names are the
Keras conv layer names (``Conv1``, ``block_3_expand``, ``expanded_conv_depthwise``, ...).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pipeline.models import keras_h5
from pipeline.models.convert import StateReader
from pipeline.models.depthwise import DepthwiseConv, resolve_depthwise
from pipeline.models.layers import fold_batchnorm, layer_span
from pipeline.models.spec import BackboneSpec
from pipeline.models.families import convert_version

CONVERT_VERSION = convert_version("mobilenet_v2")  # registered in pipeline.models.families

# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 2.
BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))
BN_EPS = 1e-3
# keras_applications' mobilenet_v2.py, which produced the published files, named the head "Logits"
# (Keras 3: "predictions"; Keras loads these files by layer order, so names never mattered).
LEGACY_NAMES = {"Logits": "predictions"}


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, never more than 10% down (Keras rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def correct_pad(size: tuple[int, int], kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Keras ``imagenet_utils.correct_pad``: zero padding before a stride-2 VALID conv.

    Args:
      size: (H, W) of the input.
      kernel: kernel size k.

    Returns:
      ((top, bottom), (left, right)) = (k//2 - 1 + H%2, k//2) per axis: one row less at the top
      for even sizes.
    """
    return tuple((kernel // 2 - (1 - s % 2), kernel // 2) for s in size)  # type: ignore[return-value]


def blocks(alpha: float) -> Iterator[tuple[str, int, int, int, int]]:
    """Yield (Keras prefix, expansion, input channels, output channels, stride) per block."""
    cin = make_divisible(32 * alpha)
    i = 0
    for t, c, n, s in BLOCKS:
        cout = make_divisible(int(c * alpha))
        for r in range(n):
            yield ("expanded_conv_" if i == 0 else f"block_{i}_"), t, cin, cout, (s if r == 0 else 1)
            cin = cout
            i += 1


def last_channels(alpha: float) -> int:
    """Channels of ``Conv_1`` (the feature dimension)."""
    return make_divisible(1280 * alpha) if alpha > 1.0 else 1280


class MobileNetV2(nn.Module):
    """MobileNetV2 trunk with folded BatchNorm: ``apply({"params": p}, x) -> (B, 1280)``.

    Attributes:
      alpha: width multiplier.
      depthwise: ``"xla"`` or ``"shifted"`` (see `pipeline.models.layers`).
      dtype: computation dtype (parameters stay float32).
    """

    alpha: float = 1.0
    depthwise: str = "xla"
    dtype: Any = jnp.float32
    start: str | None = None  # run only layer_names()[start:stop] (see pipeline.models.cut)
    stop: str | None = None

    def layer_names(self) -> list[str]:
        """Top-level layers in order: Conv1, expanded_conv, block_1..block_16, Conv_1, pool."""
        return ["Conv1", *(p.rstrip("_") for p, *_ in blocks(self.alpha)), "Conv_1", "pool"]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, S, S, 3) input in [-1, 1] -> (B, 1280) global-average-pooled features."""
        def conv(y, features, k, stride, name):
            return nn.Conv(features, (k, k), strides=(stride, stride), padding="SAME",
                           dtype=self.dtype, name=name)(y)

        run = layer_span(self.layer_names(), self.start, self.stop, "mobilenet_v2")
        x = x.astype(self.dtype)
        if "Conv1" in run:
            x = nn.relu6(conv(x, make_divisible(32 * self.alpha), 3, 2, "Conv1"))
        for p, t, cin, cout, stride in blocks(self.alpha):  # x: (B, H, W, cin)
            if p.rstrip("_") not in run:
                continue
            y = nn.relu6(conv(x, t * cin, 1, 1, f"{p}expand")) if t != 1 else x  # (B, H, W, t*cin)
            pad = correct_pad(y.shape[1:3], 3) if stride == 2 else ((1, 1), (1, 1))
            y = DepthwiseConv(3, stride=stride, padding=pad, use_bias=True, depthwise=self.depthwise,
                              dtype=self.dtype, name=f"{p}depthwise")(y)
            y = nn.relu6(y)  # (B, H/stride, W/stride, t*cin)
            y = conv(y, cout, 1, 1, f"{p}project")  # linear bottleneck: no activation
            x = x + y if (cin == cout and stride == 1) else y
        if "Conv_1" in run:
            x = nn.relu6(conv(x, last_channels(self.alpha), 1, 1, "Conv_1"))  # out_relu: (B, h, w, 1280)
        if "pool" not in run:
            return x
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def layer_names(spec: BackboneSpec) -> list[str]:
    """The layers a cut can name, in order (see `MobileNetV2.layer_names`)."""
    return build(spec, depthwise="xla").layer_names()


def build(spec: BackboneSpec, dtype: str = "float32", depthwise: str = "auto", start: str | None = None,
          stop: str | None = None) -> MobileNetV2:
    """Flax module for a MobileNetV2 spec: ``apply({"params": p}, normalised_images) -> (B, 1280)``.

    Args:
      spec: a ``family="mobilenet_v2"`` spec (``config["alpha"]``).
      dtype: computation dtype name.
      depthwise: ``"auto"``, ``"xla"`` or ``"shifted"`` (``auto``: shifted on CPU, xla elsewhere).
      start, stop: cut to a slice of `layer_names` (see `pipeline.models.cut`).
    """
    return MobileNetV2(alpha=float(spec.config.get("alpha", 1.0)),
                       depthwise=resolve_depthwise(depthwise), dtype=jnp.dtype(dtype), start=start, stop=stop)


def param_shapes(spec: BackboneSpec) -> dict:
    """``{layer: {"kernel": shape, "bias": shape}}`` of `build(spec)`, by shape inference only."""
    s = spec.input_size
    tree = jax.eval_shape(lambda: build(spec, depthwise="xla").init(jax.random.key(0),
                                                                     jnp.zeros((1, s, s, 3))))
    return jax.tree.map(lambda a: tuple(a.shape), tree["params"])


def _bn_name(conv: str) -> str:
    """Keras BatchNorm layer that follows a conv layer."""
    if conv == "Conv1":
        return "bn_Conv1"
    if conv == "Conv_1":
        return "Conv_1_bn"
    return f"{conv}_BN"  # block_3_expand_BN, expanded_conv_depthwise_BN, ...


def keras_layers(spec: BackboneSpec) -> list[str]:
    """Keras's weighted layers for `spec`, in Keras's ``model.layers`` order (the file's order)."""
    out = ["Conv1", "bn_Conv1"]
    for p, t, _, _, _ in blocks(float(spec.config.get("alpha", 1.0))):
        convs = ([f"{p}expand"] if t != 1 else []) + [f"{p}depthwise", f"{p}project"]
        for c in convs:
            out += [c, _bn_name(c)]
    return out + ["Conv_1", "Conv_1_bn", "predictions"]


def load_state(path, spec: BackboneSpec) -> dict[str, np.ndarray]:
    """Read the published Keras ``.h5`` (see `keras_h5.read_keras_h5`) for `convert`."""
    return keras_h5.read_keras_h5(path)


def convert(state: Mapping[str, np.ndarray], spec: BackboneSpec) -> dict:
    """Convert Keras MobileNetV2 weights into this module's params (BN folded) and the ImageNet head.

    Convs have no bias in Keras; folding each with its BatchNorm (eps 1e-3) gives the Flax conv
    its bias. Depthwise kernels are stored (k, k, C, 1) by Keras and (k, k, 1, C) here; Keras 2
    files call them ``depthwise_kernel``, Keras 3 ``kernel``.

    Args:
      state: ``{"<layer>/<role>": array}`` from `load_state`.
      spec: the MobileNetV2 spec.

    Returns:
      ``{"features": {"Conv1": {"kernel", "bias"}, "expanded_conv_depthwise": ..., ...},
      "head": {"kernel": (1280, C), "bias": (C,)}}``.

    Raises:
      ConversionError: a key is missing, has the wrong shape, or is left over.
    """
    where = f"{spec.name} ({spec.weights.filename})"
    state = keras_h5.align_layers(state, keras_layers(spec), legacy_names=LEGACY_NAMES, source=where)
    r = StateReader(state, where)
    feats = {}
    for layer, leaves in param_shapes(spec).items():
        kh, kw, cin, cout = leaves["kernel"]
        if layer.endswith("depthwise"):
            key = f"{layer}/depthwise_kernel" if f"{layer}/depthwise_kernel" in state else f"{layer}/kernel"
            kernel = r.take(key, (kh, kw, cout, 1)).transpose(0, 1, 3, 2)
        else:
            kernel = r.take(f"{layer}/kernel", (kh, kw, cin, cout))
        bn = _bn_name(layer)
        gamma, beta, mean, var = (r.take(f"{bn}/{role}", (cout,))
                                  for role in ("gamma", "beta", "moving_mean", "moving_variance"))
        k, b = fold_batchnorm(kernel, gamma, beta, mean, var, BN_EPS)
        feats[layer] = {"kernel": k, "bias": b}
    dim = last_channels(float(spec.config.get("alpha", 1.0)))
    head = {"kernel": r.take("predictions/kernel", (dim, spec.num_classes)).astype(np.float32),
            "bias": r.take("predictions/bias", (spec.num_classes,)).astype(np.float32)}
    r.finish()
    return {"features": feats, "head": head}


def flops_per_image(spec: BackboneSpec) -> float:
    """Analytic multiply-adds x 2 per image at ``spec.input_size`` (convs + fc; adds/ReLU ignored)."""
    alpha = float(spec.config.get("alpha", 1.0))
    s = -(-spec.input_size // 2)  # Conv1, stride 2 SAME
    macs = s * s * 9 * 3 * make_divisible(32 * alpha)
    for _, t, cin, cout, stride in blocks(alpha):
        mid = t * cin
        if t != 1:
            macs += s * s * cin * mid
        s = -(-s // stride)
        macs += s * s * 9 * mid + s * s * mid * cout
    macs += s * s * cout * last_channels(alpha) + last_channels(alpha) * spec.num_classes
    return 2.0 * macs
