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
∩ [0, 255] (x is integer, so the bound holds exactly), then up to ``refine_steps`` signed steps of
one grey level that stay on that grid, keeping per image the best-scoring quantised image seen.
What is returned is a uint8 array, and success is measured on exactly that array.

Every image stops as soon as it is finished: its top-1 class is a target class and the target
group holds more than half the probability (a margin that survives the rounding to 8 bits). The
loops are `lax.while_loop`s that end when the whole batch is finished, or at their step budget.
One jitted function per model serves every method (the update rule is a traced value), so
neither the method, the step count nor epsilon recompiles.
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


def _refine(apply, params, q, lo, hi, mask, steps):
    """Integer-grid finishing: signed 1-level steps within [lo, hi], best image per row kept.

    Stops early once every row's best image is finished (`_done`).

    Args:
      q: (B, S, S, 3) float holding integers, already inside [lo, hi].
      lo, hi: (B, S, S, 3) integer bounds.
      steps: traced most refinement steps.

    Returns:
      (best image, its target log-prob) per row, and the steps taken.
    """
    value_grad = jax.value_and_grad(lambda p, x, m: _logits_objective(apply, p, x, m), argnums=1, has_aux=True)

    def cond(carry):
        i, *_, best_done = carry
        return (i < steps) & ~jnp.all(best_done)

    def body(carry):
        i, q, g, best, best_lp, best_done = carry
        q = jnp.clip(q + jnp.sign(g), lo, hi)  # stays on the integer grid
        (_, (lp, logits)), g = value_grad(params, q, mask)  # score of q, and where to go next
        better = (lp > best_lp) & ~best_done  # a finished row keeps the image that finished it
        best = jnp.where(better[:, None, None, None], q, best)
        return i + 1, q, g, best, jnp.where(better, lp, best_lp), best_done | (better & _done(logits, mask))

    (_, (lp0, logits0)), g0 = value_grad(params, q, mask)  # the rounded image: where it is finished, no steps
    n, _, _, best, best_lp, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(0), q, g0, q, lp0, _done(logits0, mask)))
    return best, best_lp, n


def integer_bounds(x: jax.Array, epsilon: jax.Array | float | None):
    """[lo, hi] of the integer L-inf ball around integer image x, intersected with [0, 255]."""
    if epsilon is None:
        return jnp.zeros_like(x), jnp.full_like(x, 255.0)
    e = jnp.floor(epsilon + 1e-6)  # x is integer, so x - eps rounded inwards is x - floor(eps)
    return jnp.maximum(x - e, 0.0), jnp.minimum(x + e, 255.0)


_SIGNED, _ADAM = 0, 1  # update rules: signed steps in a ball (FGSM, PGD), Adam on the pixels (unbounded)


def _done(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """(B,) an image is finished: its top-1 class is a target class and the group holds p > 1/2."""
    return top1_in_group(logits, mask) & (group_log_prob(logits, mask) > jnp.log(0.5))


@functools.cache
def _attack_fn(apply: Callable):
    """Compile-once factory: one jitted program for every method, per model apply.

    The method is a traced value (FGSM is one PGD step of size epsilon), so FGSM, PGD and the
    unbounded attack share one compiled forward/backward. The loop is a `lax.while_loop` that
    stops as soon as every image of the batch is finished (`_done`), or after `steps`; a
    finished image is no longer changed (the batch's other images still pay for its gradient
    until they finish too).
    """
    value_grad = jax.value_and_grad(lambda p, x, m: _logits_objective(apply, p, x, m), argnums=1, has_aux=True)

    @jax.jit
    def run(params, x_uint8, mask, rule, epsilon, step_size, steps, refine_steps, random_start, lr, key):
        x = x_uint8.astype(jnp.float32)  # (B, S, S, 3) integers in [0, 255]
        bounded = rule == _SIGNED
        big = jnp.float32(255.0)
        radius = jnp.where(bounded, epsilon, big)
        lo, hi = integer_bounds(x, radius)
        start = jax.random.uniform(key, x.shape, minval=-epsilon, maxval=epsilon)
        adv = jnp.clip(x + jnp.where(random_start & bounded, start, 0.0), 0.0, 255.0)
        opt = optax.adam(1.0)

        def cond(carry):
            i, _, _, done = carry
            return (i < steps) & ~jnp.all(done)

        def body(carry):
            i, adv, state, _ = carry
            (_, (_, logits)), g = value_grad(params, adv, mask)
            done = _done(logits, mask)  # judged before this step's change: finished images stay
            signed = jnp.clip(jnp.clip(adv + step_size * jnp.sign(g), x - radius, x + radius), 0.0, 255.0)
            upd, new_state = opt.update(-g, state, adv)
            adam = jnp.clip(adv + lr * upd, 0.0, 255.0)
            new = jnp.where(bounded, signed, adam)
            adv = jnp.where(done[:, None, None, None], adv, new)
            return i + 1, adv, new_state, done

        none = jnp.zeros(x.shape[:1], bool)
        n, adv, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), adv, opt.init(adv), none))
        q = jnp.clip(jnp.round(adv), lo, hi)
        best, logp, n_refine = _refine(apply, params, q, lo, hi, mask, refine_steps)
        return best.astype(jnp.uint8), logp, n + n_refine + 1  # forward/backward passes of the batch

    return run


def _logits_objective(apply: Callable, params, x, mask):
    logits = apply(params, x)
    logp = group_log_prob(logits, mask)  # (B,)
    return jnp.sum(logp), (logp, logits)


def attack(model: PixelModel, images: np.ndarray, mask: np.ndarray, method: Method, epsilon: float,
           steps: int = 10, step_size: float = 0.5, refine_steps: int = 5, random_start: bool = False,
           lr: float = 1.0, seed: int = 0) -> np.ndarray:
    """Attack a batch towards one target; each image stops changing once it is finished
    (top-1 in the target group with group probability above 1/2).

    Args:
      model: pixel-space classifier.
      images: (B, S, S, 3) uint8 photos (already resized and cropped for the model).
      mask: (C,) boolean target classes.
      method: ``fgsm``, ``pgd`` or ``unbounded``.
      epsilon: L-inf bound in grey levels (ignored by ``unbounded``).
      steps: most PGD / unbounded iterations (ignored by ``fgsm``).
      step_size: PGD step in grey levels.
      refine_steps: most integer-grid finishing steps (see module docstring).
      random_start: PGD starts from a uniform point in the ball.
      lr: Adam learning rate in grey levels for ``unbounded``.
      seed: PRNG seed for the random start.

    Returns:
      (B, S, S, 3) uint8 adversarial images; for bounded methods
      ``|adv - images| <= floor(epsilon)`` holds exactly.
    """
    return attack_counted(model, images, mask, method, epsilon, steps, step_size, refine_steps, random_start,
                          lr, seed)[0]


def attack_counted(model: PixelModel, images: np.ndarray, mask: np.ndarray, method: Method, epsilon: float,
                   steps: int = 10, step_size: float = 0.5, refine_steps: int = 5, random_start: bool = False,
                   lr: float = 1.0, seed: int = 0) -> tuple[np.ndarray, int]:
    """`attack`, and how many forward/backward passes of the batch it took (early stops included)."""
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    run = _attack_fn(model.apply)
    if method == "fgsm":  # one signed step of size epsilon
        steps, step_size, random_start = 1, epsilon, False
    rule = _ADAM if method == "unbounded" else _SIGNED
    adv, _, passes = run(model.params, jnp.asarray(images, jnp.uint8), jnp.asarray(mask), jnp.int32(rule),
                         jnp.float32(epsilon), jnp.float32(step_size), jnp.int32(steps), jnp.int32(refine_steps),
                         jnp.bool_(random_start), jnp.float32(lr), jax.random.key(seed))
    return np.asarray(adv), int(passes)


@functools.cache
def _predict_fn(apply: Callable):
    @jax.jit
    def predict(params, x_uint8):
        return apply(params, x_uint8.astype(jnp.float32))

    return predict


PREDICT_BATCH = 8  # images per forward call: one compiled shape per model, shared by the stages


def predict_logits(model: PixelModel, images: np.ndarray, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """(N, C) logits of uint8 images, in batches of `batch_size` (the last one padded: one
    compiled shape per model and batch size, whatever N is)."""
    predict = _predict_fn(model.apply)
    out = []
    n = len(images)
    for start in range(0, n, batch_size):
        chunk = images[start:start + batch_size]
        pad = batch_size - len(chunk)
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
