"""A small MLP head (Flax) trained with optax; the whole training run is one jitted loop.

Training is a `lax.while_loop` over epochs, each a `lax.scan` over shuffled minibatches, followed
by the validation loss; the loop keeps the parameters of the best validation epoch and stops after
`patience` epochs without improvement. Nothing goes back to the host until training ends, so an
epoch costs its FLOPs and nothing else. The same run `vmap`ped over folds (`cv_fn`) gives the
k-fold curves that `pipeline.heads.mlp_fit` chooses the epoch count from.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal, Sequence

import numpy as np

from pipeline.heads.params import MLPParams

_DEFAULT = MLPParams()  # the one home of the defaults


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """``heads.mlp`` less ``refit``: what shapes one fit (the compiled program's key)."""

    hidden: tuple[int, ...] = _DEFAULT.hidden
    activation: Literal["relu", "gelu"] = _DEFAULT.activation
    dropout: float = _DEFAULT.dropout
    learning_rate: float = _DEFAULT.learning_rate
    weight_decay: float = _DEFAULT.weight_decay
    label_smoothing: float = _DEFAULT.label_smoothing
    schedule: Literal["cosine", "constant"] = _DEFAULT.schedule
    warmup_epochs: int = _DEFAULT.warmup_epochs
    batch_size: int = _DEFAULT.batch_size
    max_epochs: int = _DEFAULT.max_epochs
    patience: int = _DEFAULT.patience
    skip: bool = _DEFAULT.skip


def make_module(num_classes: int, hidden: Sequence[int], activation: str = "gelu",
                dropout: float = 0.0, skip: bool = False):
    """The Flax module: Dense -> activation -> Dropout per hidden size, then Dense to classes.

    With `skip`, a linear layer from the input is added to the logits (a linear probe plus an
    MLP residual). Training sets it to the fitted logreg, keeps it fixed, and starts the MLP's
    output layer at zero, so training starts from the linear probe's solution and early stopping
    on val loss only moves away from it when the hidden path helps.
    """
    import flax.linen as nn

    act = {"relu": nn.relu, "gelu": nn.gelu}[activation]

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x, deterministic: bool = True):  # (B, D) -> (B, K)
            h = x
            for i, width in enumerate(hidden):
                h = act(nn.Dense(width, name=f"hidden_{i}")(h))
                h = nn.Dropout(dropout)(h, deterministic=deterministic)
            init = nn.initializers.zeros if skip else nn.initializers.lecun_normal()
            out = nn.Dense(num_classes, name="out", kernel_init=init)(h)
            if skip:
                out = out + nn.Dense(num_classes, name="skip")(x)
            return out

    return MLP()


@dataclasses.dataclass
class MLPResult:
    """A trained MLP.

    Attributes:
      params: the Flax params of the best validation epoch.
      best_epoch: 1-based epoch whose params were kept (0: the starting point, i.e. the
        logreg skip alone, was never beaten on val loss).
      epochs_run: epochs trained before early stopping (or max_epochs).
      train_loss, val_loss: (epochs_run,) per-epoch mean training loss (smoothed labels, with
        dropout) and validation log loss.
      val_accuracy: (epochs_run,) per-epoch validation accuracy.
    """

    params: dict
    best_epoch: int
    epochs_run: int
    train_loss: np.ndarray
    val_loss: np.ndarray
    val_accuracy: np.ndarray


#: Settings passed to the compiled training run as values, not baked into it: changing one
#: reuses the compiled program (the rest of `MLPConfig` shapes the program and is static).
TRACED = ("learning_rate", "weight_decay", "label_smoothing")


def _static(cfg: MLPConfig) -> MLPConfig:
    """`cfg` with the `TRACED` settings zeroed: the key of the compiled program."""
    return dataclasses.replace(cfg, **{name: 0.0 for name in TRACED})


def traced(cfg: MLPConfig) -> np.ndarray:
    """The `TRACED` settings as the float32 vector the training run takes."""
    return np.array([getattr(cfg, name) for name in TRACED], np.float32)


def _train_fn(cfg: MLPConfig, num_classes: int, n_train: int, dim: int):
    """The whole training run, compiled once per (static config, shapes)."""
    return _train_fn_static(_static(cfg), num_classes, n_train, dim)


@functools.cache
def _train_fn_static(cfg: MLPConfig, num_classes: int, n_train: int, dim: int):
    from pipeline.exported import persistent_jit

    return persistent_jit(_build_train(cfg, num_classes, n_train), name="heads.mlp.train",
                          config=(cfg, num_classes, n_train, dim))


def cv_fn(cfg: MLPConfig, num_classes: int, n_train: int, dim: int):
    """The training run `vmap`ped over folds: per-fold weights, held-out weights and skip init."""
    return _cv_fn_static(_static(cfg), num_classes, n_train, dim)


@functools.cache
def _cv_fn_static(cfg: MLPConfig, num_classes: int, n_train: int, dim: int):
    import jax

    from pipeline.exported import persistent_jit

    run = jax.vmap(_build_train(cfg, num_classes, n_train),
                   in_axes=(None, None, 0, None, None, 0, None, 0, None, None, None))
    return persistent_jit(run, name="heads.mlp.cv", config=(cfg, num_classes, n_train, dim))


def _build_train(cfg: MLPConfig, num_classes: int, n_train: int):
    """The pure training run: (X, y, sw, Xv, yv, swv, seed, skip_init, n_epochs, keep_last,
    hyper) -> (best params, best epoch, epochs run, train loss, val loss, val accuracy per epoch).

    ``hyper`` holds the `TRACED` settings (`traced`); `cfg`'s own values for them are unused.
    """
    import jax
    import jax.numpy as jnp
    import optax

    module = make_module(num_classes, cfg.hidden, cfg.activation, cfg.dropout, cfg.skip)
    bs = min(cfg.batch_size, n_train)
    steps = -(-n_train // bs)  # ceil: every sample is seen once per epoch
    total = steps * cfg.max_epochs
    warm = min(steps * cfg.warmup_epochs, total - 1)
    # The schedule at peak 1, scaled by the traced peak (optax's schedules branch in Python on
    # their peak value, so a traced one cannot go in); both shapes are linear in the peak.
    if cfg.schedule == "cosine":
        unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, max(warm, 1), total)
    else:
        unit = optax.join_schedules([optax.linear_schedule(0.0, 1.0, max(warm, 1)),
                                     optax.constant_schedule(1.0)], [max(warm, 1)])

    def optimizer(peak_lr, weight_decay):
        tx = optax.adamw(lambda step: peak_lr * unit(step), weight_decay=weight_decay)
        if cfg.skip:
            # The skip path is the fitted linear probe and stays as it is (no updates, no decay):
            # only the MLP residual trains. Measured on real photos, this beat a trainable skip.
            tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                       lambda params: {k: "frozen" if k == "skip" else "train" for k in params})
        return tx

    def weighted_ce(logits, y, w, smoothing):
        targets = optax.smooth_labels(jax.nn.one_hot(y, num_classes), smoothing)
        ce = optax.softmax_cross_entropy(logits, targets)
        return jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1e-12)

    def weighted_accuracy(logits, y, w):
        return jnp.sum(w * (jnp.argmax(logits, -1) == y)) / jnp.maximum(jnp.sum(w), 1e-12)

    def loss_fn(params, x, y, w, key, smoothing):
        logits = module.apply({"params": params}, x, deterministic=False, rngs={"dropout": key})
        return weighted_ce(logits, y, w, smoothing)

    grad_fn = jax.value_and_grad(loss_fn)

    def epoch(params, opt_state, X, y, sw, key, tx, smoothing):
        key_perm, key_drop = jax.random.split(key)
        # Pad the permutation to whole batches; padded slots repeat samples with weight 0.
        perm = jax.random.permutation(key_perm, n_train)
        perm = jnp.concatenate([perm, perm[: steps * bs - n_train]]).reshape(steps, bs)
        mask = (jnp.arange(steps * bs) < n_train).reshape(steps, bs).astype(X.dtype)

        def step(carry, inp):
            params, opt_state = carry
            idx, m, k = inp
            loss, grads = grad_fn(params, X[idx], y[idx], sw[idx] * m, k, smoothing)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(
            step, (params, opt_state), (perm, mask, jax.random.split(key_drop, steps)))
        return params, opt_state, jnp.mean(losses)

    def train(X, y, sw, Xv, yv, swv, seed, skip_init, n_epochs, keep_last, hyper):
        peak_lr, weight_decay, smoothing = hyper[0], hyper[1], hyper[2]  # the order of TRACED
        tx = optimizer(peak_lr, weight_decay)
        # The seed, not a key, is the argument: typed key arrays do not go through jax.export.
        key_init, key_loop = jax.random.split(jax.random.key(seed))
        params = module.init(key_init, X[:1])["params"]
        if cfg.skip:
            params = {**params, "skip": {"kernel": skip_init[0], "bias": skip_init[1]}}
        opt_state = tx.init(params)
        nan = jnp.full((cfg.max_epochs,), jnp.nan, jnp.float32)
        # Epoch 0 is the starting point: with a logreg skip, the MLP must beat it to be kept.
        start_loss = weighted_ce(module.apply({"params": params}, Xv), yv, swv, 0.0) if cfg.skip else jnp.inf
        state = dict(params=params, opt=opt_state, best=params, best_loss=start_loss,
                     best_epoch=0, bad=0, epoch=0, key=key_loop, tr=nan, va=nan, acc=nan)

        def body(s):
            key, sub = jax.random.split(s["key"])
            params, opt_state, tr = epoch(s["params"], s["opt"], X, y, sw, sub, tx, smoothing)
            logits_v = module.apply({"params": params}, Xv)
            va = weighted_ce(logits_v, yv, swv, 0.0)
            better = keep_last | (va < s["best_loss"])
            pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(better, a, b), new, old)
            e = s["epoch"]
            return dict(params=params, opt=opt_state, best=pick(params, s["best"]),
                        best_loss=jnp.where(better, va, s["best_loss"]),
                        best_epoch=jnp.where(better, e + 1, s["best_epoch"]),
                        bad=jnp.where(better, 0, s["bad"] + 1), epoch=e + 1, key=key,
                        tr=s["tr"].at[e].set(tr), va=s["va"].at[e].set(va),
                        acc=s["acc"].at[e].set(weighted_accuracy(logits_v, yv, swv)))

        def cond(s):
            return (s["epoch"] < n_epochs) & (keep_last | (s["bad"] < cfg.patience))

        s = jax.lax.while_loop(cond, body, state)
        return s["best"], s["best_epoch"], s["epoch"], s["tr"], s["va"], s["acc"]

    return train


def train(X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None,
          num_classes: int, cfg: MLPConfig, seed: int, sample_weight: np.ndarray | None = None,
          val_weight: np.ndarray | None = None,
          skip_init: tuple[np.ndarray, np.ndarray] | None = None,
          epochs: int | None = None) -> MLPResult:
    """Train an MLP head with early stopping on the validation log loss (or for fixed epochs).

    Args:
      X, y: (N, D) float32 training features and (N,) int labels.
      X_val, y_val: validation features and labels (early stopping and checkpoint choice);
        unused (may be None) with `epochs`.
      num_classes: K.
      cfg: architecture and optimisation settings.
      seed: makes initialisation, shuffling and dropout reproducible.
      sample_weight, val_weight: per-sample loss weights (class weights), or None for ones.
      skip_init: (W (D, K), b (K,)) of a linear probe fit on the same (standardised) features;
        required when ``cfg.skip``.
      epochs: train exactly this many epochs (the learning-rate schedule still spans
        ``cfg.max_epochs``) and keep the last params: the refit on train+val of a run whose
        best epoch is known. 0 returns the starting point.

    Returns:
      An `MLPResult` holding the best epoch's params.
    """
    import jax

    if epochs is not None:
        X_val, y_val, val_weight = X, y, sample_weight  # the loop still computes a loss; unused
    # Host-side constants and device_put (not jnp.ones / jnp.asarray): each eager jnp op
    # compiles a small program in every new process, and those miss the persistent cache.
    X = jax.device_put(np.asarray(X, np.float32))
    Xv = jax.device_put(np.asarray(X_val, np.float32))
    sw = np.ones(len(y), np.float32) if sample_weight is None else np.asarray(sample_weight, np.float32)
    swv = np.ones(len(y_val), np.float32) if val_weight is None else np.asarray(val_weight, np.float32)
    if cfg.skip and skip_init is None:
        raise ValueError("cfg.skip needs skip_init, the linear probe to start from")
    if skip_init is None:
        skip_init = (np.zeros((X.shape[1], num_classes)), np.zeros((num_classes,)))
    skip_init = tuple(np.asarray(a, np.float32) for a in skip_init)
    fn = _train_fn(cfg, num_classes, X.shape[0], X.shape[1])
    params, best_epoch, ran, tr, va, acc = fn(X, np.asarray(y, np.int32), sw, Xv,
                                            np.asarray(y_val, np.int32), swv, np.uint32(seed),
                                            skip_init, np.int32(cfg.max_epochs if epochs is None else epochs),
                                            np.asarray(epochs is not None), traced(cfg))
    ran = int(ran)
    return MLPResult(jax.device_get(params), int(best_epoch), ran, np.asarray(tr)[:ran], np.asarray(va)[:ran],
                     np.asarray(acc)[:ran])
