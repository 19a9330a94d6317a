"""Ideal images: gradient ascent on a class's log-probability, all targets in one jitted batch.

Loss per image t (summed over the batch, so each image gets its own gradient):

    -log p(target_t | T(render(z_t)))  +  tv_weight * TV(image_t)  +  l2_weight * L2(image_t)

where T is a fresh random shift/zoom/rotation each step (`transforms.random_affine`) and render is
the chosen parameterisation (`parameterization`). The step loop is a `lax.scan` over a fixed
chunk of steps inside one jitted function; the caller runs ceil(steps / chunk) chunks, with steps
past the requested count masked out, so any number of steps uses the same compiled code and the
host syncs once per chunk (for the progress bar), never per step. The compiled runner is built by
a `functools.cache` factory keyed on the model's `apply` and the static choices (parameterisation,
optimiser, image size); learning rate and all penalty/transform magnitudes are traced values.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pipeline.gradients import parameterization, regularizers, transforms
from pipeline.gradients.model import PixelModel, group_log_prob

Optimizer = Literal["adam", "sgd"]
OPTIMIZERS = ("adam", "sgd")
# What is maximised: the target's log-probability, or its logit (logsumexp of the group's logits),
# which feature-visualisation work prefers: a probability saturates near 1 (its gradient vanishes
# once the image "is" the class) and can rise by pushing other classes down instead.
Objective = Literal["prob", "logit"]
OBJECTIVES = ("prob", "logit")


@dataclasses.dataclass(frozen=True)
class IdealSettings:
    """One optimisation recipe (the stage's params minus targets, plus the option name).

    Attributes:
      steps: optimisation steps.
      lr: learning rate (for ``pixel``, on the [0, 1] image scale).
      optimizer: ``adam`` or ``sgd`` (momentum 0.9).
      param: ``pixel`` or ``fourier`` (see `parameterization`).
      decay: spectrum decay power for ``fourier`` (1 = 1/f).
      tv_weight: weight of total variation (on the [0, 1] scale).
      l2_weight: weight of the pull towards grey.
      jitter: largest random shift, pixels.
      scale: largest random relative zoom.
      rotate: largest random rotation, degrees.
      polish: the last `polish` steps run without transforms, so the final (untransformed) image
        itself reaches a high probability after the transforms shaped it.
      objective: ``prob`` (log-probability of the target) or ``logit`` (its group logit).
      seed: PRNG seed (initial image and transforms).
    """

    steps: int = 256
    lr: float = 0.05
    optimizer: Optimizer = "adam"
    param: parameterization.Kind = "fourier"
    decay: float = 1.0
    tv_weight: float = 0.0
    l2_weight: float = 0.0
    jitter: float = 0.0
    scale: float = 0.0
    rotate: float = 0.0
    polish: int = 0
    objective: Objective = "prob"
    seed: int = 0


@dataclasses.dataclass
class IdealResult:
    """Output of `optimize`.

    Attributes:
      images: (T, S, S, 3) uint8 final images (what is saved and evaluated).
      log_prob: (T,) final target log-probability of the uint8 image, untransformed.
      logits: (T, C) logits of the uint8 image.
      tv: (T,) total variation of the uint8 image ([0, 1] scale).
      curve: (steps, T) target log-probability seen at each step (on the transformed image).
      compiles: how many times the step function was traced in this call (1 for a fresh shape,
        0 when the compiled runner was reused).
    """

    images: np.ndarray
    log_prob: np.ndarray
    logits: np.ndarray
    tv: np.ndarray
    curve: np.ndarray
    compiles: int


def _make_optimizer(name: str) -> optax.GradientTransformation:
    if name == "adam":
        return optax.inject_hyperparams(optax.adam)(learning_rate=0.0)
    if name == "sgd":
        return optax.inject_hyperparams(optax.sgd)(learning_rate=0.0, momentum=0.9)
    raise ValueError(f"optimizer: {name!r} is not one of {', '.join(OPTIMIZERS)}")


def _group_logit(logits: jax.Array, mask: jax.Array, domain: jax.Array) -> jax.Array:
    """(T,) logsumexp of each target's logits; centred on a 2-class domain.

    A binary logistic head fixes class 0's logit at 0 (`heads.logreg.linear_logits`), so its raw
    logit has no gradient; relative to the head's mean logit it is -z/2 (and class 1's +z/2), the
    two sides of the one decision. Larger domains (ImageNet's 1000) keep the raw logit.
    """
    group = jax.nn.logsumexp(jnp.where(mask, logits, -jnp.inf), axis=-1)
    domain = jnp.broadcast_to(domain, logits.shape)
    n = jnp.sum(domain, axis=-1)
    mean = jnp.sum(jnp.where(domain, logits, 0.0), axis=-1) / jnp.maximum(n, 1)
    return group - jnp.where(n == 2, mean, 0.0)


TRACE_COUNT = {"n": 0}  # incremented each time a step function is traced (tests check compile-once)


@functools.cache
def _runner(apply: Callable, kind: str, optimizer: str, size: int, decay: float, chunk: int,
            objective: str = "prob"):
    """Compile-once factory: returns (init_fn, chunk_fn), both jitted."""
    opt = _make_optimizer(optimizer)

    def loss_fn(z, model_params, masks, hyper, key, transform_on):
        # Channels-first until the network input: the inverse FFT yields it, the transforms want it.
        images = parameterization.render_nchw(kind, z, size, decay)  # (T, 3, S, S) in [0, 255]
        magnitudes = [transform_on * hyper[k] for k in ("jitter", "scale", "rotate")]
        # No resampling at all when nothing moves (polish steps, recipes without transforms).
        seen = jax.lax.cond(sum(magnitudes) > 0,
                            lambda im: transforms.random_affine(key, im, *magnitudes, channels_first=True),
                            lambda im: im, images)
        logits = apply(model_params, jnp.transpose(seen, (0, 2, 3, 1))).astype(jnp.float32)  # (T, C)
        logp = group_log_prob(logits, *masks)  # (T,)
        score = _group_logit(logits, *masks) if objective == "logit" else logp
        unit = images / 255.0
        penalty = hyper["tv_weight"] * regularizers.total_variation(unit, axes=(2, 3)) \
            + hyper["l2_weight"] * regularizers.l2_to_grey(unit)
        return jnp.sum(penalty - score), logp

    @jax.jit
    def init_fn(key, lr, masks):
        z = parameterization.init(kind, key, masks[0].shape[0], size)
        state = opt.init(z)
        state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
        return z, state

    @jax.jit
    def chunk_fn(z, opt_state, key, i, model_params, masks, hyper, n_steps):
        def step(carry, _):
            z, opt_state, key, i = carry
            TRACE_COUNT["n"] += 1
            key, sub = jax.random.split(key)
            transform_on = (i < n_steps - hyper["polish"]).astype(jnp.float32)  # off for the last steps
            (_, logp), grad = jax.value_and_grad(loss_fn, has_aux=True)(z, model_params, masks, hyper, sub,
                                                                          transform_on)
            updates, new_state = opt.update(grad, opt_state, z)
            new_z = parameterization.project(kind, optax.apply_updates(z, updates))
            live = i < n_steps  # steps past the requested count (last chunk) change nothing
            z = jnp.where(live, new_z, z)
            opt_state = jax.tree.map(lambda new, old: jnp.where(live, new, old), new_state, opt_state)
            return (z, opt_state, key, i + 1), logp

        (z, opt_state, key, i), curve = jax.lax.scan(step, (z, opt_state, key, i), None,
                                                     length=chunk)  # curve: (chunk, T)
        return z, opt_state, key, i, curve

    @jax.jit
    def final_fn(z, model_params, masks):
        images = jnp.round(parameterization.render(kind, z, size, decay))  # what gets saved
        logits = apply(model_params, images)
        return (images.astype(jnp.uint8), group_log_prob(logits, *masks), logits,
                regularizers.total_variation(images / 255.0))

    return init_fn, chunk_fn, final_fn


def optimize(model: PixelModel, masks: np.ndarray, settings: IdealSettings, domains: np.ndarray | None = None,
             chunk: int = 32, on_chunk: Callable[[int], Any] | None = None) -> IdealResult:
    """Optimise one image per target, all at once.

    Args:
      model: the pixel-space classifier.
      masks: (T, C) boolean, row t = classes of target t (`model.class_mask`).
      domains: (T, C) boolean, the classes target t's softmax runs over (its head's segment of a
        `model.multi_head_model`); None: all classes.
      settings: the recipe.
      chunk: steps per jitted call (host sync granularity).
      on_chunk: called with the number of steps just done after each chunk (progress bars).

    Returns:
      An `IdealResult`; probabilities and TV are measured on the final uint8 images.
    """
    size = model.input_size
    if settings.objective not in OBJECTIVES:
        raise ValueError(f"objective: {settings.objective!r} is not one of {', '.join(OBJECTIVES)}")
    init_fn, chunk_fn, final_fn = _runner(model.apply, settings.param, settings.optimizer, size,
                                          float(settings.decay), int(chunk), settings.objective)
    traced_before = TRACE_COUNT["n"]
    masks = (jnp.asarray(masks), jnp.ones(masks.shape, bool) if domains is None else jnp.asarray(domains))
    key = jax.random.key(settings.seed)
    key, init_key = jax.random.split(key)
    z, opt_state = init_fn(init_key, settings.lr, masks)
    hyper = {k: jnp.asarray(getattr(settings, k), jnp.float32)
             for k in ("tv_weight", "l2_weight", "jitter", "scale", "rotate", "polish")}
    i = jnp.asarray(0, jnp.int32)
    n_steps = jnp.asarray(settings.steps, jnp.int32)
    curves = []
    done = 0
    while done < settings.steps:
        z, opt_state, key, i, curve = chunk_fn(z, opt_state, key, i, model.params, masks, hyper, n_steps)
        curves.append(curve)
        n = min(chunk, settings.steps - done)
        done += n
        if on_chunk is not None:
            jax.block_until_ready(z)
            on_chunk(n)
    images, logp, logits, tv = final_fn(z, model.params, masks)
    curve = np.concatenate([np.asarray(c) for c in curves])[:settings.steps] if curves else np.zeros((0, len(masks[0])))
    return IdealResult(np.asarray(images), np.asarray(logp), np.asarray(logits), np.asarray(tv), curve,
                       TRACE_COUNT["n"] - traced_before)
