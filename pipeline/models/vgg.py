"""VGG16 / VGG19 (Simonyan & Zisserman 2014) as Keras Applications builds them, in Flax.

Variants are data: ``spec.config["blocks"]`` gives the number of 3x3 convs in each of the five
blocks ((2, 2, 3, 3, 3) for VGG16, (2, 2, 4, 4, 4) for VGG19); block widths are the paper's
(64, 128, 256, 512, 512). Parameter names are the Keras layer names (``block1_conv1``, ``fc1``, ...)
so the converter is a checked identity map.

Features are the output of ``fc2`` after its ReLU (4096-d), not a global average of the conv map.
Why: the registry's ImageNet head is one dense layer on the features, and the published VGG head
is ``predictions`` on ``fc2``; with fc2 features, ``imagenet_logits(embed(x))`` is exactly the Keras
model and the gradient stages differentiate the real network, pixels -> logits. A pooled 512-d
conv feature would have no linear ImageNet head (the published fc1 reads the flattened 7x7x512
map, position by position). fc2 ("fc7" in Caffe terms) is also the classic VGG transfer feature
(DeCAF; Razavian et al. 2014). The price: the input must be exactly ``spec.input_size`` (224),
which the pipeline's resize-and-crop guarantees.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pipeline.models import keras_h5
from pipeline.models.convert import StateReader
from pipeline.models.layers import layer_span
from pipeline.models.spec import BackboneSpec
from pipeline.models.families import convert_version

CONVERT_VERSION = convert_version("vgg")  # registered in pipeline.models.families

WIDTHS = (64, 128, 256, 512, 512)
FC_DIM = 4096


def conv_names(blocks: Sequence[int]) -> list[str]:
    """Keras names of the conv layers, in order: block1_conv1, block1_conv2, block2_conv1, ..."""
    return [f"block{b + 1}_conv{i + 1}" for b, n in enumerate(blocks) for i in range(n)]


class VGG(nn.Module):
    """VGG up to fc2: ``apply({"params": p}, x) -> (B, 4096)``.

    Attributes:
      blocks: convs per block, e.g. (2, 2, 3, 3, 3).
      input_size: input side S; fixes fc1's input size, (S/32)^2 * 512 (25088 at 224).
      dtype: computation dtype (parameters stay float32).
    """

    blocks: Sequence[int] = (2, 2, 3, 3, 3)
    input_size: int = 224
    dtype: Any = jnp.float32
    start: str | None = None  # run only layer_names()[start:stop] (see pipeline.models.cut)
    stop: str | None = None

    def layer_names(self) -> list[str]:
        """Layers in order: block1_conv1, ..., block1_pool, ..., block5_pool, fc1 (flatten + dense), fc2."""
        out, convs = [], iter(conv_names(self.blocks))
        for b, n in enumerate(self.blocks):
            out += [next(convs) for _ in range(n)] + [f"block{b + 1}_pool"]
        return out + ["fc1", "fc2"]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, S, S, 3) caffe-normalised BGR -> (B, 4096) fc2 features."""
        run = layer_span(self.layer_names(), self.start, self.stop, "vgg")
        x = x.astype(self.dtype)
        names = iter(conv_names(self.blocks))
        for b, (width, n) in enumerate(zip(WIDTHS, self.blocks)):
            for _ in range(n):
                name = next(names)
                if name in run:
                    x = nn.relu(nn.Conv(width, (3, 3), padding="SAME", dtype=self.dtype, name=name)(x))
            if f"block{b + 1}_pool" in run:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))  # blockN_pool: (B, H/2, W/2, width)
        if "fc1" in run:
            m = self.input_size // 32
            if x.shape[1:3] != (m, m):
                raise ValueError(f"VGG needs a {self.input_size}x{self.input_size} input (fc1 reads a "
                                 f"{m}x{m}x512 map); got a {x.shape[1]}x{x.shape[2]} map.")
            x = x.reshape(x.shape[0], -1)  # (B, m*m*512) in HWC order, as Keras Flatten (channels_last)
            x = nn.relu(nn.Dense(FC_DIM, dtype=self.dtype, name="fc1")(x))
        if "fc2" in run:
            x = nn.relu(nn.Dense(FC_DIM, dtype=self.dtype, name="fc2")(x))  # (B, 4096)
        return x


def layer_names(spec: BackboneSpec) -> list[str]:
    """The layers a cut can name, in order (see `VGG.layer_names`)."""
    return build(spec).layer_names()


def build(spec: BackboneSpec, dtype: str = "float32", depthwise: str = "auto", start: str | None = None,
          stop: str | None = None) -> VGG:
    """Flax module for a VGG spec: ``module.apply({"params": p}, normalised_images) -> (B, 4096)``.

    Args:
      spec: a ``family="vgg"`` spec (``config["blocks"]``).
      dtype: computation dtype name.
      depthwise: unused (VGG has no depthwise convs); accepted for the uniform family API.
      start, stop: cut to a slice of `layer_names` (see `pipeline.models.cut`).
    """
    del depthwise
    return VGG(blocks=tuple(spec.config["blocks"]), input_size=spec.input_size, dtype=jnp.dtype(dtype),
               start=start, stop=stop)


def param_shapes(spec: BackboneSpec) -> dict:
    """``{layer: {"kernel": shape, "bias": shape}}`` of `build(spec)`, by shape inference only."""
    s = spec.input_size
    tree = jax.eval_shape(lambda: build(spec).init(jax.random.key(0), jnp.zeros((1, s, s, 3))))
    return jax.tree.map(lambda a: tuple(a.shape), tree["params"])


def keras_layers(spec: BackboneSpec) -> list[str]:
    """Keras's weighted layers for `spec`, in Keras's ``model.layers`` order (the file's order)."""
    return conv_names(spec.config["blocks"]) + ["fc1", "fc2", "predictions"]


def load_state(path, spec: BackboneSpec) -> dict[str, np.ndarray]:
    """Read the published Keras ``.h5`` (see `keras_h5.read_keras_h5`) for `convert`."""
    return keras_h5.read_keras_h5(path)


def convert(state: Mapping[str, np.ndarray], spec: BackboneSpec) -> dict:
    """Convert Keras VGG weights into this module's params and the ImageNet head.

    Keras kernels are already HWIO / (in, out) (TF dim ordering), and the flatten before fc1 is
    HWC in both, so every array is used as stored; only keys and shapes are checked.

    Args:
      state: ``{"<layer>/<role>": array}`` from `load_state`.
      spec: the VGG spec.

    Returns:
      ``{"features": {"block1_conv1": {"kernel", "bias"}, ..., "fc1", "fc2"},
      "head": {"kernel": (4096, C), "bias": (C,)}}`` (``head`` is Keras's ``predictions``).

    Raises:
      ConversionError: a key is missing, has the wrong shape, or is left over.
    """
    where = f"{spec.name} ({spec.weights.filename})"
    r = StateReader(keras_h5.align_layers(state, keras_layers(spec), source=where), where)
    feats = {layer: {role: r.take(f"{layer}/{role}", shape).astype(np.float32)
                     for role, shape in leaves.items()}
             for layer, leaves in param_shapes(spec).items()}
    head = {"kernel": r.take("predictions/kernel", (FC_DIM, spec.num_classes)).astype(np.float32),
            "bias": r.take("predictions/bias", (spec.num_classes,)).astype(np.float32)}
    r.finish()
    return {"features": feats, "head": head}


def flops_per_image(spec: BackboneSpec) -> float:
    """Analytic multiply-adds x 2 per image at ``spec.input_size`` (convs + fc layers)."""
    s, cin, macs = spec.input_size, 3, 0
    for width, n in zip(WIDTHS, spec.config["blocks"]):
        for _ in range(n):
            macs += s * s * 9 * cin * width
            cin = width
        s //= 2
    macs += s * s * cin * FC_DIM + FC_DIM * FC_DIM + FC_DIM * spec.num_classes
    return 2.0 * macs
