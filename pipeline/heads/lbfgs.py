"""A small L-BFGS for smooth convex objectives, written to be traced, jitted and vmapped cheaply.

Why not `optax.lbfgs`: its zoom line search traces into a much larger program (more to trace
and compile per shape), and on the heads' logistic regressions it took more iterations than
scipy's L-BFGS-B and ran slower per problem under `vmap` (the learning curve fits its draws
together); docs/benchmarks.md, "The heads' solver choices", has the comparison.

The method is textbook (Nocedal & Wright, Algorithms 7.4-7.5): a two-loop recursion over the last
`memory` curvature pairs, the initial matrix scaled by s'y / y'y, and a backtracking line search
on the Armijo condition with safeguarded quadratic interpolation. The first step has length 1
(as scipy's). It stops like scipy's L-BFGS-B: when the largest gradient entry is at most `tol`,
after `max_iter` iterations, or when the line search can no longer decrease the objective (the
float32 precision floor).
"""

from __future__ import annotations

from typing import Callable, NamedTuple


class Result(NamedTuple):
    x: "jax.Array"  # noqa: F821 -- the minimiser found, same shape as x0
    value: "jax.Array"  # noqa: F821
    n_iter: "jax.Array"  # noqa: F821
    converged: "jax.Array"  # noqa: F821 -- gradient criterion met (not max_iter, not a stall)


def minimize(fun: Callable, x0, *, max_iter: int, tol: float, memory: int = 10,
             max_linesearch: int = 30, c1: float = 1e-4) -> Result:
    """Minimise ``fun(x) -> scalar`` over a flat vector ``x`` from ``x0``.

    Args:
      fun: smooth objective of a 1-D array; differentiated with `jax.value_and_grad`.
      x0: (n,) starting point.
      max_iter: iteration cap (static).
      tol: stop when ``max |grad|`` is at most this.
      memory: curvature pairs kept.
      max_linesearch: backtracking steps before the line search gives up.
      c1: Armijo sufficient-decrease constant.

    Returns:
      A `Result`. Pure and traceable: call it inside `jax.jit`, `jax.vmap`, `lax.scan`.
    """
    import jax
    import jax.numpy as jnp

    value_and_grad = jax.value_and_grad(fun)
    dtype = x0.dtype
    f0, g0 = value_and_grad(x0)

    def direction(g, S, Y, rho, k):
        """-H g by the two-loop recursion over the stored pairs, newest first."""
        used = jnp.minimum(k, memory)

        def backward(i, carry):
            q, alpha = carry
            j = (k - 1 - i) % memory
            a = jnp.where(i < used, rho[j] * (S[j] @ q), 0.0)
            return q - a * Y[j], alpha.at[j].set(a)

        q, alpha = jax.lax.fori_loop(0, memory, backward, (g, jnp.zeros((memory,), dtype)))
        j = (k - 1) % memory
        gamma = jnp.where(k > 0, (S[j] @ Y[j]) / jnp.maximum(Y[j] @ Y[j], jnp.finfo(dtype).tiny),
                          1.0 / jnp.maximum(jnp.linalg.norm(g), jnp.finfo(dtype).tiny))
        r = gamma * q

        def forward(i, r):
            j = (k - used + i) % memory
            b = rho[j] * (Y[j] @ r)
            return r + jnp.where(i < used, alpha[j] - b, 0.0) * S[j]

        return -jax.lax.fori_loop(0, memory, forward, r)

    def body(state):
        x, f, g, S, Y, rho, k, it, _ = state
        d = direction(g, S, Y, rho, k)
        slope = g @ d
        # Not a descent direction (rounding in a flat region): fall back to steepest descent.
        d = jnp.where(slope < 0, d, -g)
        slope = jnp.where(slope < 0, slope, -(g @ g))

        def armijo_fails(ls):
            t, fn, _, i = ls
            return (i < max_linesearch) & ~(fn <= f + c1 * t * slope)

        def backtrack(ls):
            t, fn, _, i = ls
            # Minimiser of the quadratic through f, slope and fn, kept within [0.1 t, 0.5 t].
            t_q = -slope * t * t / (2.0 * (fn - f - slope * t))
            t = jnp.clip(jnp.where(jnp.isfinite(t_q), t_q, 0.5 * t), 0.1 * t, 0.5 * t)
            fn, gn = value_and_grad(x + t * d)
            return t, fn, gn, i + 1

        fn, gn = value_and_grad(x + d)
        t, fn, gn, _ = jax.lax.while_loop(armijo_fails, backtrack, (jnp.ones((), dtype), fn, gn, 0))
        ok = (fn <= f + c1 * t * slope) & (fn < f)
        s, yv = t * d, gn - g
        sy = s @ yv
        store = ok & (sy > jnp.finfo(dtype).eps * (yv @ yv))  # keep H positive definite
        j = k % memory
        S = jnp.where(store, S.at[j].set(s), S)
        Y = jnp.where(store, Y.at[j].set(yv), Y)
        rho = jnp.where(store, rho.at[j].set(1.0 / jnp.where(store, sy, 1.0)), rho)
        return (jnp.where(ok, x + s, x), jnp.where(ok, fn, f), jnp.where(ok, gn, g), S, Y, rho,
                k + store.astype(k.dtype), it + 1, ~ok)

    def keep_going(state):
        _, _, g, _, _, _, _, it, stalled = state
        return (it < max_iter) & (jnp.max(jnp.abs(g)) > tol) & ~stalled

    n = x0.shape[0]
    init = (x0, f0, g0, jnp.zeros((memory, n), dtype), jnp.zeros((memory, n), dtype),
            jnp.zeros((memory,), dtype), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
            jnp.zeros((), bool))
    x, f, g, *_, it, _ = jax.lax.while_loop(keep_going, body, init)
    return Result(x, f, it, jnp.max(jnp.abs(g)) <= tol)
