"""Cut a backbone at a named layer: ``trunk(params, pixels) -> activation``, ``top(params, act) -> features``.

Every family's Flax module lists its top-level layers in order (``module.layer_names()``: for
EfficientNet-Lite ``stem, block0 .. block15, head_conv, pool``) and can run any slice of them
(``start``/``stop`` attributes, `pipeline.models.layers.layer_span`). Cutting at layer ``L`` means:

  trunk = layers[:L]   pixels in [0, 255] (normalised inside, as `Backbone.embed`) -> the
                       activation ENTERING ``L`` (B, h, w, c), float32
  top   = layers[L:]   that activation -> the pooled features `embed` returns (B, D), float32

so ``top(p, trunk(p, x)) == embed(p, x)`` up to float rounding (the fusion across the jit boundary
differs; tests/test_cut.py states the tolerance). Cutting at ``pool`` gives the last feature map
(Grad-CAM's usual target); cutting at the first layer makes the trunk only the normalisation.

Both functions take the backbone's usual params tree (``{"features": ..., "head": ...}``); `top`
also accepts just ``cut.top_params(params)``, the sub-tree it reads -- the trainable part when
fine-tuning. `merge` puts a trained sub-tree back. BatchNorm is folded into the convolutions at
conversion, so a fine-tuned top keeps ImageNet's BN statistics frozen (only kernels/biases train).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable

from pipeline.errors import UserError
from pipeline.models.spec import BackboneSpec


def layer_names(spec: BackboneSpec) -> list[str]:
    """The layers of a registered backbone a cut can name, in order (imports the family: jax).

    Args:
      spec: a registered spec (`registry.get_spec`).

    Returns:
      e.g. ``["stem", "block0", ..., "block15", "head_conv", "pool"]`` for efficientnet_lite0.
    """
    from pipeline.models import registry

    return list(registry.family_module(spec).layer_names(spec))


def check_layer(names: list[str], name: str, key: str, backbone: str) -> str:
    """Return `name` if it is in `names`, else raise a UserError naming `key` and the nearest names."""
    if name in names:
        return name
    near = difflib.get_close_matches(name, names, n=3)
    hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
    raise UserError(f"{key}: {backbone} has no layer {name!r}.{hint} Its layers: {', '.join(names)}.")


@dataclasses.dataclass(frozen=True)
class Cut:
    """A backbone split at layer `at`. Build with `split`.

    Attributes:
      backbone: the `registry.Backbone`.
      at: the first layer of the top.
      top_layers: ``layer_names[at:]``.
      top_keys: keys of ``params["features"]`` that the top reads (empty for a cut at ``pool``).
      activation_shape: (h, w, c) of the activation at the cut for a ``spec.input_size`` image.
    """

    backbone: Any
    at: str
    top_layers: tuple[str, ...]
    top_keys: tuple[str, ...]
    activation_shape: tuple[int, ...]
    _trunk: Callable = dataclasses.field(repr=False)
    _top: Callable = dataclasses.field(repr=False)
    top_fn: Callable = dataclasses.field(repr=False)  # un-jitted `top`, for use inside a caller's jit

    def trunk(self, params: Any, pixels: Any) -> Any:
        """(B, S, S, 3) float RGB in [0, 255] -> (B, h, w, c) float32 activation entering `at` (jitted)."""
        return self._trunk(params, pixels)

    def top(self, params: Any, activation: Any) -> Any:
        """(B, h, w, c) activation (any float dtype) -> (B, D) float32 pooled features (jitted).

        `params` is the full tree or `top_params(params)`.
        """
        return self._top(params, activation)

    def top_params(self, params: Any) -> dict:
        """``{"features": {k: params["features"][k] for k in top_keys}}``: what `top` reads."""
        return {"features": {k: params["features"][k] for k in self.top_keys}}

    def merge(self, params: Any, top: Any) -> dict:
        """`params` with its top layers replaced by `top` (a `top_params`-shaped tree)."""
        return {**params, "features": {**params["features"], **top["features"]}}


def split(backbone: Any, at: str) -> Cut:
    """Cut `backbone` (a `registry.Backbone`) so that layer `at` and everything after it is the top.

    Raises:
      UserError: `at` is not one of ``backbone.module.layer_names()`` (message lists near names).
    """
    import jax
    import jax.numpy as jnp

    from pipeline.models import layers

    spec = backbone.spec
    names = list(backbone.module.layer_names())
    check_layer(names, at, "cut", spec.name)
    compute = jnp.dtype(backbone.dtype)
    first = names.index(at) == 0
    trunk_module = None if first else backbone.module.clone(start=None, stop=at)
    top_module = backbone.module.clone(start=at, stop=None)

    def trunk(p, pixels):
        x = layers.normalize_pixels(jnp.asarray(pixels, jnp.float32), spec.normalization, spec.mean, spec.std)
        if trunk_module is not None:
            x = trunk_module.apply({"params": p["features"]}, x.astype(compute))  # (B, h, w, c)
        return x.astype(jnp.float32)

    def top(p, act):
        # Only the top's own sub-modules are created, so a sub-tree with just top_keys suffices.
        return top_module.apply({"params": p["features"]}, jnp.asarray(act).astype(compute)).astype(jnp.float32)

    s = spec.input_size
    act = jax.eval_shape(trunk, backbone.params, jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32))
    shapes = jax.eval_shape(top_module.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct(act.shape, compute))
    top_keys = tuple(k for k in backbone.params["features"] if k in shapes.get("params", {}))
    return Cut(backbone=backbone, at=at, top_layers=tuple(names[names.index(at):]), top_keys=top_keys,
               activation_shape=tuple(act.shape[1:]), _trunk=jax.jit(trunk), _top=jax.jit(top), top_fn=top)
