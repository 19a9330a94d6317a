"""ResNet v1 (He et al. 2015) exactly as Keras Applications builds ResNet50, in Flax.

Keras details that matter for parity with its weights:
- ``conv1_pad`` zero-pads 3 pixels, then the 7x7 stride-2 conv is VALID; ``pool1_pad`` zero-pads
  1 pixel before the 3x3 stride-2 VALID max-pool (zeros are harmless there: the input is post-ReLU).
- The stride of a stage's first bottleneck sits on its first 1x1 conv (``_1_conv``) and on the
  projection shortcut (``_0_conv``), as in the original Caffe model (not on the 3x3, as in
  torchvision's "v1.5").
- Every conv has a bias, followed by BatchNorm with epsilon 1.001e-5.

The backbone is frozen, so BatchNorm is folded into the preceding conv at conversion time
(`pipeline.models.layers.fold_batchnorm`): each Flax conv carries the folded kernel and bias, and
the module has no batch statistics. Parameter names are the Keras conv layer names. Features are
the global average of ``conv5_block3_out`` (2048-d, Keras ``avg_pool``), on which the ImageNet
head (``predictions``, a dense layer) sits.

Variants are data: ``spec.config["stages"]`` is the number of bottlenecks per stage
((3, 4, 6, 3) for ResNet50; (3, 4, 23, 3) would be ResNet101 with its own weights file).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pipeline.models import keras_h5
from pipeline.models.convert import StateReader
from pipeline.models.layers import fold_batchnorm, layer_span
from pipeline.models.spec import BackboneSpec
from pipeline.models.families import convert_version

CONVERT_VERSION = convert_version("resnet")  # registered in pipeline.models.families

WIDTHS = (64, 128, 256, 512)  # bottleneck widths; block outputs are 4x these
EXPANSION = 4
BN_EPS = 1.001e-5
# keras_applications' resnet_common.py, which produced the published file, named the head "probs"
# (Keras 3 calls it "predictions"; Keras loads these files by layer order, so names never mattered).
LEGACY_NAMES = {"probs": "predictions"}


def blocks(stages: Sequence[int]) -> Iterator[tuple[str, int, int, bool]]:
    """Yield (Keras name prefix, bottleneck width, stride, has projection shortcut) per block."""
    for s, (n, width) in enumerate(zip(stages, WIDTHS)):
        for b in range(n):
            first = b == 0
            stride = (1 if s == 0 else 2) if first else 1  # conv2_x follows the max-pool: stride 1
            yield f"conv{s + 2}_block{b + 1}", width, stride, first


class ResNetV1(nn.Module):
    """ResNet v1 trunk with folded BatchNorm: ``apply({"params": p}, x) -> (B, 2048)``.

    Attributes:
      stages: bottlenecks per stage, e.g. (3, 4, 6, 3).
      dtype: computation dtype (parameters stay float32).
    """

    stages: Sequence[int] = (3, 4, 6, 3)
    dtype: Any = jnp.float32
    start: str | None = None  # run only layer_names()[start:stop] (see pipeline.models.cut)
    stop: str | None = None

    def layer_names(self) -> list[str]:
        """Top-level layers in order: conv1 (with its max-pool), conv2_block1..conv5_blockN, pool."""
        return ["conv1", *(p for p, *_ in blocks(self.stages)), "pool"]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, S, S, 3) caffe-normalised BGR -> (B, 2048) global-average-pooled features."""
        def conv(y, features, k, stride, name, pad=0):
            return nn.Conv(features, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                           dtype=self.dtype, name=name)(y)

        run = layer_span(self.layer_names(), self.start, self.stop, "resnet")
        x = x.astype(self.dtype)
        if "conv1" in run:
            x = jnp.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))  # conv1_pad
            x = nn.relu(conv(x, 64, 7, 2, "conv1_conv"))  # (B, S/2, S/2, 64)
            x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # pool1_pad (zeros; x >= 0 after ReLU)
            x = nn.max_pool(x, (3, 3), strides=(2, 2))  # (B, S/4, S/4, 64)
        for p, width, stride, shortcut in blocks(self.stages):
            if p not in run:
                continue
            short = conv(x, EXPANSION * width, 1, stride, f"{p}_0_conv") if shortcut else x
            y = nn.relu(conv(x, width, 1, stride, f"{p}_1_conv"))  # stride on the 1x1 (Caffe v1)
            y = nn.relu(conv(y, width, 3, 1, f"{p}_2_conv", pad=1))
            y = conv(y, EXPANSION * width, 1, 1, f"{p}_3_conv")
            x = nn.relu(short + y)  # {p}_out: (B, h, w, 4 * width)
        if "pool" not in run:
            return x
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # avg_pool: (B, 2048), f32 sum


def layer_names(spec: BackboneSpec) -> list[str]:
    """The layers a cut can name, in order (see `ResNetV1.layer_names`)."""
    return build(spec).layer_names()


def build(spec: BackboneSpec, dtype: str = "float32", depthwise: str = "auto", start: str | None = None,
          stop: str | None = None) -> ResNetV1:
    """Flax module for a ResNet spec: ``module.apply({"params": p}, normalised_images) -> (B, 2048)``.

    Args:
      spec: a ``family="resnet"`` spec (``config["stages"]``).
      dtype: computation dtype name.
      depthwise: unused (no depthwise convs); accepted for the uniform family API.
      start, stop: cut to a slice of `layer_names` (see `pipeline.models.cut`).
    """
    del depthwise
    return ResNetV1(stages=tuple(spec.config["stages"]), dtype=jnp.dtype(dtype), start=start, stop=stop)


def param_shapes(spec: BackboneSpec) -> dict:
    """``{conv layer: {"kernel": shape, "bias": shape}}`` of `build(spec)`, by shape inference only."""
    s = spec.input_size
    tree = jax.eval_shape(lambda: build(spec).init(jax.random.key(0), jnp.zeros((1, s, s, 3))))
    return jax.tree.map(lambda a: tuple(a.shape), tree["params"])


def keras_layers(spec: BackboneSpec) -> list[str]:
    """Keras's weighted layers for `spec`, in Keras's ``model.layers`` order (the file's order).

    Keras orders a functional model's layers by graph depth, so in a block with a projection the
    shortcut conv comes after the first two convs: 1_conv, 1_bn, 2_conv, 2_bn, 0_conv, 3_conv,
    0_bn, 3_bn.
    """
    out = ["conv1_conv", "conv1_bn"]
    for p, _, _, shortcut in blocks(spec.config["stages"]):
        out += [f"{p}_1_conv", f"{p}_1_bn", f"{p}_2_conv", f"{p}_2_bn"]
        out += ([f"{p}_0_conv", f"{p}_3_conv", f"{p}_0_bn", f"{p}_3_bn"] if shortcut
                else [f"{p}_3_conv", f"{p}_3_bn"])
    return out + ["predictions"]


def load_state(path, spec: BackboneSpec) -> dict[str, np.ndarray]:
    """Read the published Keras ``.h5`` (see `keras_h5.read_keras_h5`) for `convert`."""
    return keras_h5.read_keras_h5(path)


def convert(state: Mapping[str, np.ndarray], spec: BackboneSpec) -> dict:
    """Convert Keras ResNet v1 weights into this module's params (BN folded) and the ImageNet head.

    Each ``<name>_conv`` (kernel, bias) is folded with ``<name>_bn`` (gamma, beta, moving mean,
    moving variance; eps 1.001e-5). Kernels are HWIO in both Keras and Flax.

    Args:
      state: ``{"<layer>/<role>": array}`` from `load_state`.
      spec: the ResNet spec.

    Returns:
      ``{"features": {"conv1_conv": {"kernel", "bias"}, "conv2_block1_0_conv": ..., ...},
      "head": {"kernel": (2048, C), "bias": (C,)}}``.

    Raises:
      ConversionError: a key is missing, has the wrong shape, or is left over.
    """
    where = f"{spec.name} ({spec.weights.filename})"
    state = keras_h5.align_layers(state, keras_layers(spec), legacy_names=LEGACY_NAMES, source=where)
    r = StateReader(state, where)
    feats = {}
    for layer, leaves in param_shapes(spec).items():
        kernel = r.take(f"{layer}/kernel", leaves["kernel"])
        bias = r.take(f"{layer}/bias", leaves["bias"])
        bn = layer[: -len("_conv")] + "_bn"
        gamma, beta, mean, var = (r.take(f"{bn}/{role}", leaves["bias"])
                                  for role in ("gamma", "beta", "moving_mean", "moving_variance"))
        k, b = fold_batchnorm(kernel, gamma, beta, mean, var, BN_EPS, bias=bias)
        feats[layer] = {"kernel": k, "bias": b}
    dim = EXPANSION * WIDTHS[len(spec.config["stages"]) - 1]
    head = {"kernel": r.take("predictions/kernel", (dim, spec.num_classes)).astype(np.float32),
            "bias": r.take("predictions/bias", (spec.num_classes,)).astype(np.float32)}
    r.finish()
    return {"features": feats, "head": head}


def flops_per_image(spec: BackboneSpec) -> float:
    """Analytic multiply-adds x 2 per image at ``spec.input_size`` (convs + fc; adds/ReLU ignored)."""
    s = (spec.input_size + 6 - 7) // 2 + 1  # conv1: 112 at 224
    macs = s * s * 49 * 3 * 64
    s = (s + 2 - 3) // 2 + 1  # pool1: 56
    cin = 64
    for _, width, stride, shortcut in blocks(spec.config["stages"]):
        so = (s - 1) // stride + 1
        if shortcut:
            macs += so * so * cin * EXPANSION * width
        macs += so * so * (cin * width + 9 * width * width + width * EXPANSION * width)
        s, cin = so, EXPANSION * width
    macs += cin * spec.num_classes
    return 2.0 * macs
