"""Targeted adversarial attacks in pixel space, finished on the uint8 grid.

All attacks push up ``log p(target group | x)`` (`model.group_log_prob`) of a batch of photos.
Pixels are on the 0..255 scale before the backbone's normalisation, so ``epsilon`` is in grey
levels: epsilon = 2 means every channel of every pixel moves by at most 2/255.

- ``fgsm``: one signed-gradient step of size epsilon (Goodfellow et al. 2015, targeted form).
- ``pgd``: iterated signed-gradient steps of size ``step_size``, projected back onto the
  L-inf ball and [0, 255] after each (Madry et al. 2018), optionally from a random start.
- ``unbounded``: the lesson's approach, Adam on the pixels with no bound but [0, 255].

A float attack can be undone by rounding the result to 8 bits, so every method ends with the same
finishing pass: round to integers, clip into the *integer* ball [x - floor(eps), x + floor(eps)]
∩ [0, 255] (x is integer, so the bound holds exactly), then ``refine_steps`` signed steps of one
grey level that stay on that grid, keeping per image the best-scoring quantised image seen. What
is returned is a uint8 array, and success is measured on exactly that array.

Loops are `lax.fori_loop` with traced bounds inside one jitted function per (model, method), so
neither the step count nor epsilon recompiles.
"""

from __future__ import annotations

import functools
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pipeline.gradients.model import PixelModel, group_log_prob, top1_in_group

Method = Literal["fgsm", "pgd", "unbounded"]
METHODS = ("fgsm", "pgd", "unbounded")


def _objective(apply: Callable):
    """(params, x (B,S,S,3), mask) -> (sum of target log-probs, per-image log-probs)."""

    def f(params, x, mask):
        logp = group_log_prob(apply(params, x), mask)  # (B,)
        return jnp.sum(logp), logp

    return f


def _grad(apply: Callable):
    return jax.grad(_objective(apply), argnums=1, has_aux=True)


def _refine(apply, params, q, lo, hi, mask, steps):
    """Integer-grid finishing: signed 1-level steps within [lo, hi], best image per row kept.

    Args:
      q: (B, S, S, 3) float holding integers, already inside [lo, hi].
      lo, hi: (B, S, S, 3) integer bounds.
      steps: traced number of refinement steps.

    Returns:
      (best image, its target log-prob), per row.
    """
    value_grad = jax.value_and_grad(_objective(apply), argnums=1, has_aux=True)

    def body(_, carry):
        q, best, best_lp = carry
        (_, lp), g = value_grad(params, q, mask)  # score of q, and where to go next
        better = lp > best_lp
        best = jnp.where(better[:, None, None, None], q, best)
        q = jnp.clip(q + jnp.sign(g), lo, hi)  # stays on the integer grid
        return q, best, jnp.maximum(lp, best_lp)

    neg = jnp.full(q.shape[:1], -jnp.inf)
    q, best, best_lp = jax.lax.fori_loop(0, steps, body, (q, q, neg))
    _, lp = _objective(apply)(params, q, mask)  # the last step's image has not been scored yet
    better = lp > best_lp
    return jnp.where(better[:, None, None, None], q, best), jnp.maximum(lp, best_lp)


def integer_bounds(x: jax.Array, epsilon: jax.Array | float | None):
    """[lo, hi] of the integer L-inf ball around integer image x, intersected with [0, 255]."""
    if epsilon is None:
        return jnp.zeros_like(x), jnp.full_like(x, 255.0)
    e = jnp.floor(epsilon + 1e-6)  # x is integer, so x - eps rounded inwards is x - floor(eps)
    return jnp.maximum(x - e, 0.0), jnp.minimum(x + e, 255.0)


@functools.cache
def _attack_fn(apply: Callable, method: str):
    """Compile-once factory: one jitted attack per (model apply, method)."""
    grad_fn = _grad(apply)

    @jax.jit
    def run(params, x_uint8, mask, epsilon, step_size, steps, refine_steps, random_start, lr, key):
        x = x_uint8.astype(jnp.float32)  # (B, S, S, 3) integers in [0, 255]
        bounded = method != "unbounded"
        lo, hi = integer_bounds(x, epsilon if bounded else None)
        if method == "fgsm":
            g, _ = grad_fn(params, x, mask)
            adv = x + epsilon * jnp.sign(g)
        elif method == "pgd":
            start = jax.random.uniform(key, x.shape, minval=-epsilon, maxval=epsilon)
            adv = jnp.clip(x + jnp.where(random_start, start, 0.0), 0.0, 255.0)

            def body(_, adv):
                g, _ = grad_fn(params, adv, mask)
                adv = jnp.clip(adv + step_size * jnp.sign(g), x - epsilon, x + epsilon)
                return jnp.clip(adv, 0.0, 255.0)

            adv = jax.lax.fori_loop(0, steps, body, adv)
        else:  # unbounded: Adam on the pixels (gradient descent on -log p), only [0, 255]
            opt = optax.adam(lr)

            def body(_, carry):
                adv, state = carry
                g, _ = grad_fn(params, adv, mask)
                upd, state = opt.update(-g, state, adv)
                return jnp.clip(optax.apply_updates(adv, upd), 0.0, 255.0), state

            adv, _ = jax.lax.fori_loop(0, steps, body, (x, opt.init(x)))
        q = jnp.clip(jnp.round(adv), lo, hi)
        best, logp = _refine(apply, params, q, lo, hi, mask, refine_steps)
        return best.astype(jnp.uint8), logp

    return run


def attack(model: PixelModel, images: np.ndarray, mask: np.ndarray, method: Method, epsilon: float,
           steps: int = 10, step_size: float = 0.5, refine_steps: int = 5, random_start: bool = False,
           lr: float = 1.0, seed: int = 0) -> np.ndarray:
    """Attack a batch towards one target.

    Args:
      model: pixel-space classifier.
      images: (B, S, S, 3) uint8 photos (already resized and cropped for the model).
      mask: (C,) boolean target classes.
      method: ``fgsm``, ``pgd`` or ``unbounded``.
      epsilon: L-inf bound in grey levels (ignored by ``unbounded``).
      steps: PGD / unbounded iterations (ignored by ``fgsm``).
      step_size: PGD step in grey levels.
      refine_steps: integer-grid finishing steps (see module docstring).
      random_start: PGD starts from a uniform point in the ball.
      lr: Adam learning rate in grey levels for ``unbounded``.
      seed: PRNG seed for the random start.

    Returns:
      (B, S, S, 3) uint8 adversarial images; for bounded methods
      ``|adv - images| <= floor(epsilon)`` holds exactly.
    """
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    run = _attack_fn(model.apply, method)
    adv, _ = run(model.params, jnp.asarray(images, jnp.uint8), jnp.asarray(mask),
                 jnp.float32(epsilon), jnp.float32(step_size), jnp.int32(steps), jnp.int32(refine_steps),
                 jnp.bool_(random_start), jnp.float32(lr), jax.random.key(seed))
    return np.asarray(adv)


@functools.cache
def _predict_fn(apply: Callable):
    @jax.jit
    def predict(params, x_uint8):
        return apply(params, x_uint8.astype(jnp.float32))

    return predict


def predict_logits(model: PixelModel, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """(N, C) logits of uint8 images, in batches (the last one padded to keep one compiled shape)."""
    predict = _predict_fn(model.apply)
    out = []
    n = len(images)
    for start in range(0, n, batch_size):
        chunk = images[start:start + batch_size]
        pad = batch_size - len(chunk) if n > batch_size else 0
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        out.append(np.asarray(predict(model.params, jnp.asarray(chunk)))[:len(chunk) - pad])
    return np.concatenate(out) if out else np.zeros((0, len(model.classes)), np.float32)


def success(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N,) bool: the top-1 class is one of the target classes."""
    return np.asarray(top1_in_group(jnp.asarray(logits), jnp.asarray(mask)))


def target_prob(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N,) probability of the target group."""
    return np.exp(np.asarray(group_log_prob(jnp.asarray(logits), jnp.asarray(mask))))


def distortion(original: np.ndarray, adversarial: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image L-inf, L2 (grey levels) and PSNR (dB; inf when identical) of uint8 images."""
    d = adversarial.astype(np.float64) - original.astype(np.float64)  # (N, S, S, 3)
    flat = d.reshape(len(d), -1)
    mse = np.mean(flat ** 2, axis=1)
    with np.errstate(divide="ignore"):
        psnr = np.where(mse > 0, 10.0 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-300)), np.inf)
    return {"linf": np.max(np.abs(flat), axis=1), "l2": np.sqrt(np.sum(flat ** 2, axis=1)), "psnr": psnr}
