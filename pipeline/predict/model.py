"""The trained classifier as one pure JAX function: uint8 photo crops in, class probabilities out.

``probabilities(backbone_params, head_params, views)`` runs the frozen backbone on every view of
every image, combines the views the way the features stage did (``reduce: mean`` averages the
features; ``reduce: rows`` trained the head on each view, so their probabilities are averaged),
rounds the features to the stored dtype when the features stage stored float16 (the head was fit
on rounded features), and applies the head from `pipeline.heads.trained.load_head`. A new head
type plugs in through `load_head` (its ``logits(params, features)``); a new backbone through the
registry. Weights are arguments, never closures, so the jitted trace can be kept on disk
(`pipeline.exported.persistent_jit`) and reused by the next process.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.predict.resolve import RunRef


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How a photo becomes the backbone's input (the features stage's params, made explicit).

    Attributes:
      input_size: side of the square crop fed to the network (S).
      resize_size: the shorter side is resized to this (PIL, `resize_method`) before cropping.
      resize_method: ``bicubic`` or ``bilinear`` (PIL's antialiased filters).
      crops: crop positions (``center``, corners), in view order.
      flip: each crop is also seen mirrored left-right.
      reduce: ``mean`` (average features over views) or ``rows`` (average probabilities).
      normalization, mean, std: the backbone's pixel normalisation (applied inside the model).
      feature_dtype: the dtype the features stage stored (the head saw features rounded to it).
    """

    input_size: int
    resize_size: int
    resize_method: str
    crops: tuple[str, ...]
    flip: bool
    reduce: str
    normalization: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    feature_dtype: str

    @property
    def views(self) -> int:
        return len(self.crops) * (2 if self.flip else 1)


def preprocess_of(run: RunRef) -> Preprocess:
    """The preprocessing `run`'s features were computed with."""
    from pipeline.models import registry
    from pipeline.features.params import FeaturesParams, input_spec, view_plan

    known = {f.name for f in dataclasses.fields(FeaturesParams)}
    fp = FeaturesParams(**{k: (tuple(v) if isinstance(v, list) else v)
                           for k, v in run.features.items() if k in known})
    spec = input_spec(registry.get_spec(run.backbone_name), fp)
    crops, flip = view_plan(fp)
    return Preprocess(spec.input_size, spec.resize_size, spec.resize_method, tuple(crops), flip,
                      fp.reduce, spec.normalization, tuple(spec.mean), tuple(spec.std), fp.dtype)


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A loaded classifier: backbone, head, preprocessing and the jitted function.

    Attributes:
      run: the run it comes from.
      head_name: which head (``logreg``, ``mlp``, ...).
      classes: class names, index = label.
      spec: the backbone's `BackboneSpec`.
      preprocess: see `Preprocess`.
      backbone_params, head_params: the weights (jax arrays).
      probabilities: ``(backbone_params, head_params, (B, V, S, S, 3) uint8) -> (B, C) float32``
        (pure, not jitted: `predict` jits it, `export` traces it).
    """

    run: RunRef
    head_name: str
    classes: list[str]
    spec: Any
    preprocess: Preprocess
    backbone_params: Any
    head_params: Any
    probabilities: Callable = dataclasses.field(repr=False)
    config: tuple = ()

    def jitted(self) -> Callable:
        """`probabilities` under `persistent_jit`: traced once per batch shape, kept on disk."""
        from pipeline.exported import persistent_jit

        return persistent_jit(self.probabilities, name="predict.classify", config=self.config)


def load_classifier(run: RunRef, head_name: str, *, depthwise: str | None = None,
                    dtype: str | None = None) -> Classifier:
    """Build the classifier of `run` with head `head_name`.

    Args:
      run: from `pipeline.predict.resolve.load_run`.
      head_name: a head saved in the run (see `resolve.choose_head`).
      depthwise: override the run's ``backbone.depthwise`` (export uses ``xla``: the converters
        map the library depthwise convolution to their own; the numbers are the same).
      dtype: override ``backbone.dtype``.

    Returns:
      A `Classifier`.
    """
    import jax
    import jax.numpy as jnp

    from pipeline.heads.trained import load_head
    from pipeline.models import registry

    dtype = dtype or run.backbone.get("dtype", "float32")
    depthwise = depthwise or run.backbone.get("depthwise", "auto")
    spec = registry.get_spec(run.backbone_name)  # native: the weights and the module
    # device_put first: jnp.asarray (in make_backbone) on numpy compiles one tiny conversion per
    # distinct shape, 1.7 s for Lite0's 100 arrays, a third of predict's cold start; on arrays
    # already on the device it is free.
    from pipeline import storage

    # With a gs:// cache, weights live in this host's local folder (as the stages keep them).
    weights_root = storage.default_local_dir() if storage.is_remote(run.cache_dir) else run.cache_dir
    params = jax.device_put(registry.load_params(spec, weights_root))
    backbone = registry.make_backbone(spec, params, dtype, depthwise)
    head = load_head(run.heads_dir, head_name)
    if head.classes != run.classes:
        raise ValueError(f"{run.heads_dir}: head {head_name!r} has other classes than heads.json")
    pre = preprocess_of(run)
    backbone = dataclasses.replace(backbone, spec=spec.at_size(pre.input_size))  # what the features saw
    store = jnp.dtype(pre.feature_dtype)
    rows = pre.reduce == "rows"

    def probabilities(bp: Any, hp: Any, views: Any) -> Any:
        b, v, s = views.shape[0], views.shape[1], views.shape[2]
        feats = backbone.embed(bp, views.reshape(b * v, s, s, 3).astype(jnp.float32))  # (B*V, D)
        feats = feats.astype(store).astype(jnp.float32)          # as the features stage stored them
        if rows:                                                  # head saw each view as a row
            probs = jax.nn.softmax(head.logits(hp, feats), axis=-1)          # (B*V, C)
            return probs.reshape(b, v, -1).mean(axis=1)                      # (B, C)
        feats = feats.reshape(b, v, -1).mean(axis=1)                          # (B, D)
        return jax.nn.softmax(head.logits(hp, feats), axis=-1)               # (B, C)

    from pipeline.models.depthwise import resolve_depthwise

    config = (run.backbone_name, dtype, resolve_depthwise(depthwise), head.kind, repr(sorted(head.config.items())),
              len(run.classes), dataclasses.astuple(pre))
    return Classifier(run=run, head_name=head_name, classes=list(run.classes), spec=backbone.spec,
                      preprocess=pre, backbone_params=backbone.params, head_params=head.params,
                      probabilities=probabilities, config=config)


def batch_sizes(batch_size: int) -> list[int]:
    """Padded batch shapes used: powers of two below `batch_size`, and `batch_size` itself.

    A remainder of 3 images runs at 4, not 32: one compiled shape per power of two is cheaper
    than padding a photo or two to a full batch (batch-1 latency is what a user waits for).
    """
    sizes, b = [], 1
    while b < batch_size:
        sizes.append(b)
        b *= 2
    return [*sizes, batch_size]


def padded_size(n: int, batch_size: int) -> int:
    """The smallest of `batch_sizes(batch_size)` that holds `n` (n <= batch_size)."""
    return next(b for b in batch_sizes(batch_size) if b >= n)


def run_batches(fn: Callable, clf: Classifier, batches: Sequence[np.ndarray], batch_size: int):
    """Apply the jitted `fn` to uint8 (n, V, S, S, 3) batches, padding each to a compiled size.

    Yields:
      (n, C) float32 probabilities per batch, one batch kept in flight so that decoding and the
      device overlap.
    """
    pending = None
    for batch in batches:
        n = len(batch)
        size = padded_size(n, batch_size)
        if size != n:
            batch = np.concatenate([batch, np.zeros((size - n, *batch.shape[1:]), batch.dtype)])
        out = fn(clf.backbone_params, clf.head_params, batch)   # dispatched, not awaited
        if pending is not None:
            yield np.asarray(pending[0])[:pending[1]]
        pending = (out, n)
    if pending is not None:
        yield np.asarray(pending[0])[:pending[1]]
