"""Ideal images: gradient ascent on a class score, every recipe of a target in one jitted batch.

Loss per image r (summed over the batch, so each image gets its own gradient):

    -score_r(T_r(render_r(z_r)))  +  tv_weight_r * TV(image_r)  +  l2_weight_r * L2(image_r)

where score is the target's log-probability or its logit (per row), T_r a fresh random
shift/zoom/rotation each step drawn from row r's own key (`transforms.warp_nchw`), and render the
row's parameterisation (`parameterization`). Every recipe setting is a per-row traced value:
the parameterisation (both are carried, a row renders the one it chose), the objective, the
optimiser (Adam or SGD with momentum, both tracked, the row's own applied), learning rate,
spectrum decay, penalties, transform magnitudes, polish and step count (a row stops changing
after its own steps). So one compiled program runs every recipe of a target side by side; the
stage runs one batch per target through it.

Rows do not interact: a row's result depends on its settings, target, key and position, not on
what the other rows hold, so the stage remembers each target's batch alone (`gradients.memo`).

The step loop is a `lax.scan` over a fixed chunk of steps inside one jitted function; the
caller runs ceil(steps / chunk) chunks, with steps past each row's count masked out, so any
number of steps uses the same compiled code and the host syncs once per chunk (for the progress
bar), never per step. The compiled runner comes from a `functools.cache` factory keyed on the
model's `apply`, the image size and the chunk length.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal, Sequence

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

# Per-row values of the compiled runner (all traced).
_ROW_FIELDS = ("lr", "decay", "tv_weight", "l2_weight", "jitter", "scale", "rotate", "polish", "steps",
               "fourier", "logit", "adam")


def row_values(settings: Sequence[IdealSettings]) -> dict[str, np.ndarray]:
    """(R,) float32 arrays of the per-row settings the compiled runner reads."""
    for s in settings:
        if s.objective not in OBJECTIVES:
            raise ValueError(f"objective: {s.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if s.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: {s.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if s.param not in parameterization.KINDS:
            raise ValueError(f"param: {s.param!r} is not one of {', '.join(parameterization.KINDS)}")
    cols = {k: [float(getattr(s, k)) for s in settings] for k in _ROW_FIELDS[:9]}
    cols["fourier"] = [float(s.param == "fourier") for s in settings]
    cols["logit"] = [float(s.objective == "logit") for s in settings]
    cols["adam"] = [float(s.optimizer == "adam") for s in settings]
    return {k: np.asarray(v, np.float32) for k, v in cols.items()}


def _rows(x: jax.Array, ndim: int) -> jax.Array:
    """(R,) -> (R, 1, ..., 1) with `ndim` dimensions in all, to broadcast over one row's values."""
    return x.reshape(x.shape + (1,) * (ndim - 1))


def _draw(keys: jax.Array, h: dict, moving: jax.Array):
    """Each row's random shift (R, 2), zoom (R,) and angle (R,) from its own key."""
    def one(key):
        k_shift, k_scale, k_rot = jax.random.split(key, 3)
        return (jax.random.uniform(k_shift, (2,), minval=-1.0, maxval=1.0),
                jax.random.uniform(k_scale, (), minval=-1.0, maxval=1.0),
                jax.random.uniform(k_rot, (), minval=-1.0, maxval=1.0))

    u_shift, u_zoom, u_rot = jax.vmap(one)(keys)
    on = moving.astype(jnp.float32)
    return (u_shift * (on * h["jitter"])[:, None], 1.0 + u_zoom * on * h["scale"],
            jnp.deg2rad(u_rot * on * h["rotate"]))


@functools.cache
def _runner(apply: Callable, size: int, chunk: int):
    """Compile-once factory: returns (init_fn, chunk_fn, final_fn), all jitted."""
    adam, sgd = optax.scale_by_adam(), optax.trace(decay=0.9)

    def render(z, h):  # -> (R, 3, S, S) in [0, 255], channels first
        pixel, fourier = z
        four = parameterization.render_nchw("fourier", fourier, size, h["decay"])
        pix = parameterization.render_nchw("pixel", pixel, size)
        return jnp.where(_rows(h["fourier"] > 0, 4), four, pix)

    def loss_fn(z, model_params, masks, h, keys, moving):
        images = render(z, h)
        shift, zoom, angle = _draw(keys, h, moving)
        # No resampling at all when nothing moves (polish steps, recipes without transforms).
        still = jnp.all((shift == 0) & (zoom == 1)[:, None]) & jnp.all(angle == 0)
        seen = jax.lax.cond(still, lambda im: im,
                            lambda im: transforms.warp_nchw(im, shift, zoom, angle), images)
        logits = apply(model_params, jnp.transpose(seen, (0, 2, 3, 1))).astype(jnp.float32)  # (R, C)
        logp = group_log_prob(logits, *masks)  # (R,)
        score = jnp.where(h["logit"] > 0, _group_logit(logits, *masks), logp)
        unit = images / 255.0
        penalty = h["tv_weight"] * regularizers.total_variation(unit, axes=(2, 3)) \
            + h["l2_weight"] * regularizers.l2_to_grey(unit)
        return jnp.sum(penalty - score), logp

    @jax.jit
    def init_fn(keys):
        def one(key):
            k_pix, k_four = jax.random.split(key)
            return (parameterization.init("pixel", k_pix, 1, size)[0],
                    parameterization.init("fourier", k_four, 1, size)[0])

        z = jax.vmap(one)(keys)
        return z, (adam.init(z), sgd.init(z))

    @jax.jit
    def chunk_fn(z, opt_state, keys, i, model_params, masks, h):
        def step(carry, _):
            z, (sa, ss), keys, i = carry
            TRACE_COUNT["n"] += 1
            split = jax.vmap(jax.random.split)(keys)  # (R, 2) keys: the row's next key, this step's
            keys, sub = split[:, 0], split[:, 1]
            moving = i < h["steps"] - h["polish"]  # (R,) transforms off for each row's last steps
            (_, logp), grad = jax.value_and_grad(loss_fn, has_aux=True)(z, model_params, masks, h, sub, moving)
            ua, sa = adam.update(grad, sa, z)
            us, ss = sgd.update(grad, ss, z)
            live = i < h["steps"]  # (R,) a row past its own step count changes nothing

            def apply_update(z, a, s):
                u = jnp.where(_rows(h["adam"] > 0, z.ndim), a, s)
                return jnp.where(_rows(live, z.ndim), z - _rows(h["lr"], z.ndim) * u, z)

            pixel, fourier = jax.tree.map(apply_update, z, ua, us)
            z = (parameterization.project("pixel", pixel), fourier)
            return (z, (sa, ss), keys, i + 1), logp

        (z, opt_state, keys, i), curve = jax.lax.scan(step, (z, opt_state, keys, i), None,
                                                      length=chunk)  # curve: (chunk, R)
        return z, opt_state, keys, i, curve

    @jax.jit
    def final_fn(z, model_params, masks, h):
        images = jnp.round(jnp.transpose(render(z, h), (0, 2, 3, 1)))  # what gets saved, (R, S, S, 3)
        logits = apply(model_params, images)
        return (images.astype(jnp.uint8), group_log_prob(logits, *masks), logits,
                regularizers.total_variation(images / 255.0))

    return init_fn, chunk_fn, final_fn


def row_keys(seeds: Sequence[int], salts: Sequence[int]) -> jax.Array:
    """(R,) PRNG keys: row r's is seed r's key folded with salt r (its initial image and transforms)."""
    return jnp.stack([jax.random.fold_in(jax.random.key(int(s)), int(t) & 0x7FFFFFFF)
                      for s, t in zip(seeds, salts)])


def optimize_rows(model: PixelModel, masks: np.ndarray, settings: Sequence[IdealSettings],
                  domains: np.ndarray | None = None, salts: Sequence[int] | None = None, chunk: int = 32,
                  on_chunk: Callable[[int], Any] | None = None) -> IdealResult:
    """Optimise one image per row, each row with its own recipe, all at once.

    Args:
      model: the pixel-space classifier.
      masks: (R, C) boolean, row r = classes of its target (`model.class_mask`).
      settings: R recipes, one per row.
      domains: (R, C) boolean, the classes row r's softmax runs over (its head's segment of a
        `model.multi_head_model`); None: all classes.
      salts: per-row integers folded into the row's seed (`row_keys`); None: the row index.
      chunk: steps per jitted call (host sync granularity).
      on_chunk: called with the number of steps just done after each chunk (progress bars).

    Returns:
      An `IdealResult` (curve rows past a row's own step count repeat its last value's step).
    """
    size = model.input_size
    h_np = row_values(settings)
    steps = int(h_np["steps"].max())
    init_fn, chunk_fn, final_fn = _runner(model.apply, size, int(chunk))
    traced_before = TRACE_COUNT["n"]
    masks = (jnp.asarray(masks), jnp.ones(masks.shape, bool) if domains is None else jnp.asarray(domains))
    keys = row_keys([s.seed for s in settings], range(len(settings)) if salts is None else salts)
    h = {k: jnp.asarray(v) for k, v in h_np.items()}
    z, opt_state = init_fn(keys)
    i = jnp.asarray(0, jnp.int32)
    curves = []
    done = 0
    while done < steps:
        z, opt_state, keys, i, curve = chunk_fn(z, opt_state, keys, i, model.params, masks, h)
        curves.append(curve)
        n = min(chunk, steps - done)
        done += n
        if on_chunk is not None:
            jax.block_until_ready(z)
            on_chunk(n)
    images, logp, logits, tv = final_fn(z, model.params, masks, h)
    curve = np.concatenate([np.asarray(c) for c in curves])[:steps] if curves else np.zeros((0, len(settings)))
    return IdealResult(np.asarray(images), np.asarray(logp), np.asarray(logits), np.asarray(tv), curve,
                       TRACE_COUNT["n"] - traced_before)


def optimize(model: PixelModel, masks: np.ndarray, settings: IdealSettings, domains: np.ndarray | None = None,
             chunk: int = 32, on_chunk: Callable[[int], Any] | None = None) -> IdealResult:
    """Optimise one image per target with one recipe, all at once (`optimize_rows` with the same
    settings on every row).

    Args:
      model: the pixel-space classifier.
      masks: (T, C) boolean, row t = classes of target t (`model.class_mask`).
      settings: the recipe.
      domains: (T, C) boolean, the classes target t's softmax runs over; None: all classes.
      chunk: steps per jitted call (host sync granularity).
      on_chunk: called with the number of steps just done after each chunk (progress bars).

    Returns:
      An `IdealResult`; probabilities and TV are measured on the final uint8 images.
    """
    return optimize_rows(model, masks, [settings] * len(masks), domains, None, chunk, on_chunk)
