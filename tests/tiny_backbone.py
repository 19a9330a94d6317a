"""A tiny random-weight Flax CNN packaged as a real `registry.Backbone`, for fast stage tests.

It has the registry's Backbone type and calling convention (uint8-range float pixels in, pooled
features out), a small input size so that tests decode and embed in milliseconds, and weights
drawn from a fixed seed so that features are reproducible across processes.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from pipeline.models import registry
from pipeline.models.spec import BackboneSpec, WeightSource

SPEC = BackboneSpec(name="tiny_test_cnn", family="test", config={}, input_size=32, resize_size=36,
                    resize_method="bilinear", normalization="minus_one_one", feature_dim=16,
                    feature_layer="mean pool of conv2",
                    weights=WeightSource("none", "pkg://none/none", "sha256:0", "pth", "test only"))


class TinyCNN(nn.Module):
    @nn.compact
    def __call__(self, x):                                    # (B, 32, 32, 3) in [-1, 1]
        x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2))(x))    # (B, 16, 16, 8)
        x = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2))(x))   # (B, 8, 8, 16)
        return x.mean(axis=(1, 2))                            # (B, 16)


def make(seed: int = 0) -> registry.Backbone:
    module = TinyCNN()
    s = SPEC.input_size
    features = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, s, s, 3)))["params"]
    head = {"kernel": jax.random.normal(jax.random.PRNGKey(seed + 1), (16, 1000)) * 0.1,
            "bias": jnp.zeros((1000,))}

    def embed(p, pixels):
        return module.apply({"params": p["features"]}, pixels / 127.5 - 1.0)

    def logits(p, feats):
        return feats @ p["head"]["kernel"] + p["head"]["bias"]

    return registry.Backbone(spec=SPEC, params={"features": features, "head": head}, module=module,
                             dtype="float32", _embed=jax.jit(embed), _logits=jax.jit(logits))


class TinyCutCNN(nn.Module):
    """TinyCNN with named layers that `pipeline.models.cut` can split (start/stop, layer_names)."""

    start: str | None = None
    stop: str | None = None

    def layer_names(self) -> list[str]:
        return ["conv1", "conv2", "pool"]

    @nn.compact
    def __call__(self, x):
        from pipeline.models.layers import layer_span

        run = layer_span(self.layer_names(), self.start, self.stop, "tiny_cut_cnn")
        if "conv1" in run:
            x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2), name="conv1")(x))    # (B, 16, 16, 8)
        if "conv2" in run:
            x = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2), name="conv2")(x))   # (B, 8, 8, 16)
        return x.mean(axis=(1, 2)) if "pool" in run else x


def make_cuttable(seed: int = 0) -> registry.Backbone:
    """A `registry.Backbone` over `TinyCutCNN`, its embed normalising as the registry does."""
    from pipeline.models import layers

    module = TinyCutCNN()
    s = SPEC.input_size
    features = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, s, s, 3)))["params"]
    head = {"kernel": jax.random.normal(jax.random.PRNGKey(seed + 1), (16, 1000)) * 0.1,
            "bias": jnp.zeros((1000,))}

    def embed(p, pixels):
        return module.apply({"params": p["features"]}, layers.normalize_pixels(pixels, SPEC.normalization))

    def logits(p, feats):
        return feats @ p["head"]["kernel"] + p["head"]["bias"]

    return registry.Backbone(spec=SPEC, params={"features": features, "head": head}, module=module,
                             dtype="float32", _embed=jax.jit(embed), _logits=jax.jit(logits))
