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


def integer_bounds(x: jax.Array, epsilon: jax.Array | float | None):
    """[lo, hi] of the integer L-inf ball around integer image x, intersected with [0, 255]."""
    if epsilon is None:
        return jnp.zeros_like(x), jnp.full_like(x, 255.0)
    e = jnp.floor(epsilon + 1e-6)  # x is integer, so x - eps rounded inwards is x - floor(eps)
    return jnp.maximum(x - e, 0.0), jnp.minimum(x + e, 255.0)


_SIGNED, _ADAM = 0, 1  # update rules: signed steps in a ball (FGSM, PGD), Adam on the pixels (unbounded)
_ATTACK, _REFINE, _END = 0, 1, 2  # phases of the one loop


def _done(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """(B,) an image is finished: its top-1 class is a target class and the group holds p > 1/2."""
    return top1_in_group(logits, mask) & (group_log_prob(logits, mask) > jnp.log(0.5))


def _rows(flag: jax.Array) -> jax.Array:
    return flag[:, None, None, None]


@functools.cache
def _attack_fn(apply: Callable):
    """Compile-once factory: one jitted program for every method, per model apply.

    The method is a traced value (FGSM is one PGD step of size epsilon), and the attack and the
    integer-grid finishing are two phases of one `lax.while_loop` whose body runs the network's
    forward/backward once: the program holds one copy of the network, compiled once, for every
    method. Phase 1 (attack): score the images, leave finished ones (`_done`) alone, step the
    rest; after `steps` steps or once all are finished, round into the integer ball. Phase 2
    (finishing): score the quantised images, keep each row's best (a finished row keeps the
    image that finished it), step on the integer grid; end after `refine_steps` steps or once
    every row's best is finished. Returned: the best uint8 images and their logits.
    """
    value_grad = jax.value_and_grad(lambda p, x, m: _objective(apply, p, x, m), argnums=1, has_aux=True)
    opt = optax.adam(1.0)

    @jax.jit
    def run(params, x_uint8, mask, rule, epsilon, step_size, steps, refine_steps, random_start, lr, key):
        x = x_uint8.astype(jnp.float32)  # (B, S, S, 3) integers in [0, 255]
        bounded = rule == _SIGNED
        radius = jnp.where(bounded, epsilon, jnp.float32(255.0))
        lo, hi = integer_bounds(x, radius)
        start = jax.random.uniform(key, x.shape, minval=-epsilon, maxval=epsilon)
        adv = jnp.clip(x + jnp.where(random_start & bounded, start, 0.0), 0.0, 255.0)
        b = x.shape[0]
        n_classes = jnp.broadcast_to(mask, (b,) + mask.shape[-1:]).shape[-1]

        def cond(c):
            return c["phase"] != _END

        def body(c):
            (_, (lp, logits)), g = value_grad(params, c["cur"], mask)  # the one network pass
            done = _done(logits, mask)
            attacking = c["phase"] == _ATTACK
            # Attack phase: step the unfinished images.
            signed = jnp.clip(jnp.clip(c["cur"] + step_size * jnp.sign(g), x - radius, x + radius), 0.0, 255.0)
            upd, state = opt.update(-g, c["state"], c["cur"])
            adam = jnp.clip(c["cur"] + lr * upd, 0.0, 255.0)
            stepped = jnp.where(_rows(done), c["cur"], jnp.where(bounded, signed, adam))
            attack_over = (c["i"] + 1 >= steps) | jnp.all(done)
            after_attack = jnp.where(attack_over, jnp.clip(jnp.round(stepped), lo, hi), stepped)
            # Finishing phase: cur is a quantised image; keep the best per row, step on the grid.
            better = (lp > c["best_lp"]) & ~c["best_done"]
            best = jnp.where(_rows(better), c["cur"], c["best"])
            best_logits = jnp.where(better[:, None], logits, c["best_logits"])
            best_lp = jnp.where(better, lp, c["best_lp"])
            best_done = c["best_done"] | (better & done)
            refine_over = (c["j"] >= refine_steps) | jnp.all(best_done)
            after_refine = jnp.clip(c["cur"] + jnp.sign(g), lo, hi)
            return {
                "phase": jnp.where(attacking, jnp.where(attack_over, _REFINE, _ATTACK),
                                   jnp.where(refine_over, _END, _REFINE)),
                "i": c["i"] + attacking, "j": c["j"] + (1 - attacking),
                "cur": jnp.where(attacking, after_attack, after_refine),
                "state": jax.tree.map(lambda new, old: jnp.where(attacking, new, old), state, c["state"]),
                "best": jnp.where(attacking, c["best"], best),
                "best_logits": jnp.where(attacking, c["best_logits"], best_logits),
                "best_lp": jnp.where(attacking, c["best_lp"], best_lp),
                "best_done": jnp.where(attacking, c["best_done"], best_done)}

        first = jnp.where(steps > 0, _ATTACK, _REFINE)
        init = {"phase": jnp.int32(first), "i": jnp.int32(0), "j": jnp.int32(0),
                "cur": jnp.where(steps > 0, adv, jnp.clip(jnp.round(adv), lo, hi)), "state": opt.init(adv),
                "best": x, "best_logits": jnp.zeros((b, n_classes), jnp.float32),
                "best_lp": jnp.full((b,), -jnp.inf), "best_done": jnp.zeros((b,), bool)}
        out = jax.lax.while_loop(cond, body, init)
        return out["best"].astype(jnp.uint8), out["best_logits"], out["i"] + out["j"]  # passes of the batch

    return run


def _objective(apply: Callable, params, x, mask):
    logits = apply(params, x).astype(jnp.float32)
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
                   lr: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """`attack`, the logits of the returned images, and how many forward/backward passes of the
    batch it took (early stops included). ``steps=0, refine_steps=0`` scores the photos as they are."""
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    run = _attack_fn(model.apply)
    if method == "fgsm" and steps > 0:  # one signed step of size epsilon
        steps, step_size, random_start = 1, epsilon, False
    rule = _ADAM if method == "unbounded" else _SIGNED
    adv, logits, passes = run(model.params, jnp.asarray(images, jnp.uint8), jnp.asarray(mask), jnp.int32(rule),
                         jnp.float32(epsilon), jnp.float32(step_size), jnp.int32(steps), jnp.int32(refine_steps),
                         jnp.bool_(random_start), jnp.float32(lr), jax.random.key(seed))
    return np.asarray(adv), np.asarray(logits), int(passes)


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
