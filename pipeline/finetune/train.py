"""Fine-tune the top of a cut backbone + a linear head on cached trunk activations (optax).

The trainable tree is ``{"top": cut.top_params(backbone.params), "head": {"W", "b"}}``; the
frozen trunk never runs here (its activations come from the `trunk` stage). Choices, and why:

- AdamW with a linear warm-up and a cosine decay, two learning rates (`optax.multi_transform`):
  the pretrained layers move ``lr_backbone`` (small), the head ``lr_head``.
- LP-FT (Kumar et al. 2022): the head starts from the heads stage's logistic-regression probe, so
  epoch 0 already has the probe's accuracy and the first, large gradients do not wreck the
  pretrained features; ``init: random`` starts it at zero instead (the premise check's setup).
- ``l2sp`` pulls the pretrained layers toward their ImageNet values (Li et al. 2018), the
  regulariser of choice for a few dozen photos per class; weight decay applies to the head.
- Early stopping on val: each epoch ends with a val pass (centre views); the best epoch's params
  are kept (by accuracy, ties broken by log loss) and training stops after ``patience`` epochs
  without improvement.
- BatchNorm is folded into the convolutions, so its statistics stay ImageNet's (frozen BN, the
  usual choice for small-batch fine-tuning); only kernels and biases train.

Data-parallel over the local devices: batches are sharded along a 1-D ``data`` mesh axis, params
replicated; XLA inserts the gradient all-reduce. Single host only (see docs/finetune.md).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr_head: float = 1e-3
    lr_backbone: float = 1e-4
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-4
    l2sp: float = 0.0
    label_smoothing: float = 0.0
    patience: int = 3
    seed: int = 0


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> Any:
    """AdamW per group (``top``: lr_backbone, ``head``: lr_head), warm-up + cosine to 1% of the peak."""
    import optax

    total = max(1, cfg.epochs * steps_per_epoch)
    warm = min(total - 1, int(round(cfg.warmup_epochs * steps_per_epoch)))

    def sched(peak: float):
        return optax.warmup_cosine_decay_schedule(0.0, peak, max(warm, 0), total, end_value=peak * 0.01)

    return optax.multi_transform(
        {"top": optax.adamw(sched(cfg.lr_backbone), weight_decay=0.0),
         "head": optax.adamw(sched(cfg.lr_head), weight_decay=cfg.weight_decay)},
        {"top": "top", "head": "head"})


def _loss_fn(top_fn: Callable, cfg: TrainConfig, num_classes: int):
    import jax
    import jax.numpy as jnp
    import optax

    def logits_of(params, x):
        feats = top_fn({"features": params["top"]["features"]}, x)  # (B, D) float32
        return feats @ params["head"]["W"] + params["head"]["b"]     # (B, K)

    def loss(params, ref_top, x, y, w):
        logits = logits_of(params, x)
        labels = optax.smooth_labels(jax.nn.one_hot(y, num_classes), cfg.label_smoothing)
        ce = jnp.sum(optax.softmax_cross_entropy(logits, labels) * w) / jnp.maximum(jnp.sum(w), 1.0)
        reg = sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(params["top"]), jax.tree.leaves(ref_top)))
        return ce + 0.5 * cfg.l2sp * reg, ce

    return logits_of, loss


def make_step(top_fn: Callable, opt: Any, cfg: TrainConfig, num_classes: int, ref_top: Any) -> Callable:
    """The jitted training step ``step(params, opt_state, x, y) -> (params, opt_state, ce)``.

    Args:
      top_fn: the cut's un-jitted top (`Cut.top_fn`).
      opt: `make_optimizer`'s transformation.
      cfg: the settings (label smoothing, l2sp).
      num_classes: K.
      ref_top: the pretrained top params (the L2-SP anchor).
    """
    import jax
    import jax.numpy as jnp

    _, loss = _loss_fn(top_fn, cfg, num_classes)

    @jax.jit
    def step(params, opt_state, x, y):
        (_, ce), g = jax.value_and_grad(loss, has_aux=True)(params, ref_top, x, y, jnp.ones(y.shape, jnp.float32))
        updates, opt_state = opt.update(g, opt_state, params)
        return jax.tree.map(lambda p, u: p + u, params, updates), opt_state, ce

    return step


def fit(cut: Any, head_W: np.ndarray, head_b: np.ndarray, train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray] | None, cfg: TrainConfig, log: Callable[[str], None] = lambda m: None,
        ) -> dict[str, Any]:
    """Train; return the best epoch's params and the per-epoch history.

    Args:
      cut: a `pipeline.models.cut.Cut` (its backbone's params are the pretrained start).
      head_W, head_b: (D, K), (K,) starting head (the probe's, or zeros).
      train: (activations (N, r, h, w, c) any float dtype, may be memory-mapped; labels (N,)).
        Every one of the r rows of an image is a training example, so an epoch sees N * r rows.
      val: (activations (M, 1, h, w, c), labels (M,)); None trains all ``cfg.epochs`` and keeps
        the last (the refit on train+val, once val has chosen the epoch count).
      cfg: the settings.
      log: progress lines.

    Returns:
      ``{"params": best {"top", "head"} as numpy, "best_epoch", "history": [{"epoch", "train_loss",
      "val_loss", "val_accuracy", "seconds", "images_per_s"}], "start": epoch-0 {train,val}_{loss,accuracy}
      (centre views), "best_train_loss": the kept params' centre-view train loss, "seconds", ...}``.
    """
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    acts, labels = train
    n, r = acts.shape[:2]
    K = head_W.shape[1]
    devices = jax.local_devices()
    bs = -(-min(cfg.batch_size, n * r) // len(devices)) * len(devices)  # whole examples per device
    mesh = Mesh(np.array(devices), ("data",))
    rep, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    params = {"top": cut.top_params(cut.backbone.params),
              "head": {"W": jnp.asarray(head_W, jnp.float32), "b": jnp.asarray(head_b, jnp.float32)}}
    params = jax.device_put(params, rep)
    ref_top = params["top"]
    steps = max(1, (n * r) // bs)
    opt = make_optimizer(cfg, steps)
    opt_state = jax.device_put(opt.init(params), rep)
    logits_of, _ = _loss_fn(cut.top_fn, cfg, K)
    step = make_step(cut.top_fn, opt, cfg, K, ref_top)

    @jax.jit
    def evaluate(params, x, y, w):  # sums over the batch; padding rows carry w = 0
        logits = logits_of(params, x)
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]
        return jnp.sum(ce * w), jnp.sum((jnp.argmax(logits, 1) == y) * w)

    def score(params, a, y) -> tuple[float, float]:
        """(mean log loss, accuracy) over all rows of `a` (N, r, ...), in padded batches."""
        flat, yy = a.reshape(-1, *a.shape[2:]), np.repeat(y, a.shape[1])
        tot_l = tot_c = 0.0
        for s in range(0, len(yy), bs):
            xb, yb, wb = _pad(flat[s:s + bs], yy[s:s + bs], bs)
            l, c = evaluate(params, jax.device_put(xb, shard), jax.device_put(yb, shard), jax.device_put(wb, shard))
            tot_l, tot_c = tot_l + float(l), tot_c + float(c)
        return tot_l / max(len(yy), 1), tot_c / max(len(yy), 1)

    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    train_centre = (acts[:, :1], labels)
    start_train_loss, start_train_acc = score(params, *train_centre)
    best_loss, best_acc = score(params, *val) if val is not None else (float("nan"), float("nan"))
    start = {"train_loss": round(start_train_loss, 5), "train_accuracy": round(start_train_acc, 5),
             "val_loss": round(best_loss, 5), "val_accuracy": round(best_acc, 5)}
    log(f"epoch 0 (start): train loss {start_train_loss:.4f}, val loss {best_loss:.4f}, "
        f"val acc {best_acc:.4f} ({time.perf_counter() - t0:.1f} s incl. compile)")
    best = {"epoch": 0, "params": jax.device_get(params)}
    history: list[dict] = []
    since = 0
    for epoch in range(1, cfg.epochs + 1):
        t = time.perf_counter()
        order = rng.permutation(n * r)[:steps * bs]  # shuffled rows; the remainder waits for next epoch
        losses = []
        for s in range(steps):
            idx = np.sort(order[s * bs:(s + 1) * bs])  # sorted: sequential reads from a memory map
            xb = np.asarray(acts.reshape(n * r, *acts.shape[2:])[idx])
            yb = labels[idx // r].astype(np.int32)
            params, opt_state, ce = step(params, opt_state, jax.device_put(xb, shard), jax.device_put(yb, shard))
            losses.append(ce)
        train_loss = float(np.mean(jax.device_get(losses)))
        train_s = time.perf_counter() - t
        vl, va = score(params, *val) if val is not None else (float("nan"), float("nan"))
        row = {"epoch": epoch, "train_loss": round(train_loss, 5), "val_loss": round(vl, 5),
               "val_accuracy": round(va, 5), "seconds": round(time.perf_counter() - t, 2),
               "images_per_s": round(steps * bs / train_s, 1)}
        history.append(row)
        improved = val is None or (va, -vl) > (best_acc, -best_loss)
        log(f"epoch {epoch}: train loss {train_loss:.4f}, val loss {vl:.4f}, val acc {va:.4f}, "
            f"{row['images_per_s']} img/s{' *' if improved else ''}")
        if improved:
            best_acc, best_loss, since = va, vl, 0
            best = {"epoch": epoch, "params": jax.device_get(params)}
        else:
            since += 1
            if since >= cfg.patience:
                log(f"early stop: no val improvement in {cfg.patience} epochs; best epoch {best['epoch']}")
                break
    end_train_loss, _ = score(best["params"], *train_centre)
    return {"params": best["params"], "best_epoch": best["epoch"], "history": history,
            "start": start, "best_train_loss": round(end_train_loss, 5),
            "seconds": round(time.perf_counter() - t0, 2), "batch_size": bs, "steps_per_epoch": steps}


def _pad(x: np.ndarray, y: np.ndarray, bs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad a final partial batch to `bs` rows with zero-weight rows (one compiled shape)."""
    k = len(y)
    w = np.ones(bs, np.float32)
    if k < bs:
        x = np.concatenate([x, np.zeros((bs - k, *x.shape[1:]), x.dtype)])
        y = np.concatenate([y, np.zeros(bs - k, y.dtype)])
        w[k:] = 0
    return np.asarray(x), y.astype(np.int32), w


def predict(cut: Any, params: Mapping[str, Any], acts: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, K) float32 logits of centre views ``acts[:, 0]`` (N, r, h, w, c) under trained params."""
    import jax

    @jax.jit
    def logits(p, x):
        return cut.top_fn({"features": p["top"]["features"]}, x) @ p["head"]["W"] + p["head"]["b"]

    out = [np.asarray(logits(params, _pad(acts[s:s + batch_size, 0], np.zeros(min(batch_size, len(acts) - s),
                                                                               np.int32), batch_size)[0]))
           [:min(batch_size, len(acts) - s)] for s in range(0, len(acts), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, params["head"]["b"].shape[0]), np.float32)
