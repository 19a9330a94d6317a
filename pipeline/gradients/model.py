"""Pixel-space classifiers: ``apply(params, pixels (B, S, S, 3) float 0..255) -> logits (B, C)``.

The gradient stages differentiate with respect to the image, so the model they see takes raw RGB
pixels on the 0..255 scale (normalisation happens inside the backbone and is differentiable) and
returns logits of either the backbone's ImageNet head or a head trained by the `heads` stage.
Target probabilities are group probabilities (`group_log_prob`): one class is a group of one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Apply = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True, eq=False)
class PixelModel:
    """A classifier on pixels. Hashable by identity, so `apply` can key a compile cache.

    Attributes:
      name: for logs and JSON (``efficientnet_lite0+logreg``).
      apply: ``apply(params, pixels) -> logits``; pixels (B, S, S, 3) float32 in [0, 255].
      params: the pytree `apply` takes (passed as a jit argument, never baked in as a constant).
      classes: output class names (index = logit).
      input_size: S.
    """

    name: str
    apply: Apply
    params: Any
    classes: tuple[str, ...]
    input_size: int


def imagenet_model(backbone: Any) -> PixelModel:
    """Backbone + its ImageNet head.

    Args:
      backbone: a `pipeline.models.registry.Backbone` (``.embed``, ``.imagenet_logits``, ``.spec``).
    """
    from pipeline.models import imagenet

    def apply(params: Any, pixels: jax.Array) -> jax.Array:
        return backbone.imagenet_logits(params, backbone.embed(params, pixels))  # (B, 1000)

    return PixelModel(f"{backbone.spec.name}+imagenet", apply, backbone.params, tuple(imagenet.CLASSES),
                      backbone.spec.input_size)


def head_model(backbone: Any, head: Any, head_name: str) -> PixelModel:
    """Backbone + a head trained on its features (`stages.heads.TrainedHead`).

    The params are the pair (backbone params, head params).
    """

    def apply(params: Any, pixels: jax.Array) -> jax.Array:
        bb_params, head_params = params
        return head.logits(head_params, backbone.embed(bb_params, pixels))  # (B, C)

    return PixelModel(f"{backbone.spec.name}+{head_name}", apply, (backbone.params, head.params),
                      tuple(head.classes), backbone.spec.input_size)


def multi_head_model(backbone: Any, heads: Mapping[str, Any], own_backbone: Mapping[str, Any] | None = None,
                     ) -> tuple[PixelModel, dict[str, tuple[int, int]]]:
    """Backbone + several heads at once, logits concatenated: one backbone pass serves targets of
    every head, so a batch can mix ImageNet and trained-head targets.

    Args:
      backbone: the backbone.
      heads: head name -> head; the name ``imagenet`` means the backbone's own ImageNet head, any
        other value must be a `TrainedHead`.
      own_backbone: head name -> backbone params of its own (the fine-tuned classifier's merged
        params, `pipeline.finetune.model`): that head gets a second backbone pass.

    Returns:
      (model, segments) where segments[name] = (start, stop) of that head's logits. Softmaxes are
      per segment: pass the segment as ``domain`` to `group_log_prob`.
    """
    from pipeline.models import imagenet

    names = list(heads)
    segments: dict[str, tuple[int, int]] = {}
    classes: list[str] = []
    for name in names:
        cls = imagenet.CLASSES if name == "imagenet" else heads[name].classes
        segments[name] = (len(classes), len(classes) + len(cls))
        classes += [f"{name}:{c}" for c in cls]

    own = dict(own_backbone or {})

    def apply(params: Any, pixels: jax.Array) -> jax.Array:
        bb_params, head_params = params
        feats = backbone.embed(bb_params, pixels) if any(n not in own for n in names) else None  # (B, D)
        outs = []
        for name in names:
            if name in own:
                own_params, hp = head_params[name]
                outs.append(heads[name].logits(hp, backbone.embed(own_params, pixels)))
            else:
                outs.append(backbone.imagenet_logits(bb_params, feats) if name == "imagenet"
                            else heads[name].logits(head_params[name], feats))
        return jnp.concatenate(outs, axis=-1)  # (B, sum C)

    head_params = {n: ((own[n], heads[n].params) if n in own else None if n == "imagenet" else heads[n].params)
                   for n in names}
    model = PixelModel(f"{backbone.spec.name}+{'+'.join(names)}", apply, (backbone.params, head_params),
                       tuple(classes), backbone.spec.input_size)
    return model, segments


def class_mask(indices_per_row: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """(T, C) boolean mask, row t true at the classes of target t."""
    mask = np.zeros((len(indices_per_row), num_classes), bool)
    for t, idx in enumerate(indices_per_row):
        mask[t, list(idx)] = True
    return mask


def group_log_prob(logits: jax.Array, mask: jax.Array, domain: jax.Array | None = None) -> jax.Array:
    """log sum_{c in group} softmax(logits)_c, per row.

    Args:
      logits: (B, C).
      mask: (B, C) or (C,) boolean, the group's classes.
      domain: (B, C) or (C,) boolean, the classes the softmax runs over (one head's segment of a
        `multi_head_model`); None means all.

    Returns:
      (B,) log-probabilities (float32).
    """
    logits = logits.astype(jnp.float32)
    inside = jnp.where(mask, logits, -jnp.inf)
    total = logits if domain is None else jnp.where(domain, logits, -jnp.inf)
    return jax.nn.logsumexp(inside, axis=-1) - jax.nn.logsumexp(total, axis=-1)


def top1_in_group(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """(B,) bool: the arg-max class belongs to the group."""
    top = jnp.argmax(logits, axis=-1)
    mask = jnp.broadcast_to(mask, logits.shape)
    return jnp.take_along_axis(mask, top[:, None], axis=-1)[:, 0]
