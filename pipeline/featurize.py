"""Images to feature rows: parallel CPU decoding feeding one jitted, data-sharded backbone call.

Decoding and resizing run in a thread pool over PIL (`decoded_views`): PIL releases the GIL in
its JPEG decoder and resampler, so threads use every core; the pool keeps a few batches decoded
ahead so that the backbone never waits. It applies the exact PIL filter the backbone's spec
names, with the EXIF / CMYK / alpha handling of `pipeline.images`; tf.data's resize filters
differ from PIL's by about one grey level on average (up to 12) and were not faster here (see
the features stage's docstring for the measurement).

`BatchEmbedder` compiles the backbone once for a fixed padded batch shape (in a background
thread, so that the first batches are decoded meanwhile), shards every batch
over all local devices along a 1-D mesh axis ``data`` (params replicated), runs each device's
images through the network one at a time on a CPU (`IMAGES_PER_STEP`, a loop inside the
compiled call), pads the last partial batch with zeros and drops those rows from the result. One batch is kept in flight: the next batch
is dispatched before the previous result is copied back, so device and host work overlap.
"""

from __future__ import annotations

import collections
import concurrent.futures
import math
import os
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from pipeline import images, resize
from pipeline.errors import UserError


#: Images one step of the backbone loop runs through the network together, on a CPU. A whole
#: batch at once streams every layer's activations (tens of MB at 32 images) through memory, and
#: XLA:CPU's depthwise and elementwise loops are memory-bound; one image at a time keeps a layer's
#: activations in cache: the forward costs about a third less CPU per image than at batch 32, and
#: far less wall time when other processes share the cores (`benchmarks/bench_backbones.py`
#: times both). Values equal a whole-batch call's up to float rounding (~1e-6), and every
#: device layout runs the same one-image program, so features are the same bits whatever the
#: number of devices or processes. GPUs and TPUs take the whole per-device batch in one step.
IMAGES_PER_STEP = 1


def images_per_step(local_rows: int) -> int:
    """Images per step of the forward loop for `local_rows` images on each device of this backend."""
    import jax

    if jax.default_backend() != "cpu":
        return local_rows
    return math.gcd(local_rows, IMAGES_PER_STEP)


def decoded_views(sources: Iterable[Any], names: Sequence[str], spec: Any, crops: Sequence[str],
                  flip: bool, workers: int, depth: int,
                  view_fn: Callable[[Any, int], np.ndarray] | None = None) -> Iterator[np.ndarray]:
    """Decode, resize and crop images in parallel threads, yielding results in input order.

    Args:
      sources: paths or encoded bytes (see `pipeline.sources.DataSet.sources`).
      names: the image ids, for error messages (same length as `sources`).
      spec: the backbone's `BackboneSpec`.
      crops, flip: the views of each image (see `pipeline.resize.views`).
      workers: decoding threads.
      depth: how many images may be decoded ahead of the consumer.
      view_fn: optional ``view_fn(pil_image, position in this stream) -> uint8 (V, S, S, 3)`` in
        place of `crops`/`flip` (the trunk stage's random training views).

    Yields:
      uint8 (V, S, S, 3) per image.

    Raises:
      UserError: an image the data stage verified can no longer be decoded.
    """
    def work(src: Any, name: str, pos: int) -> np.ndarray:
        try:
            img = images.decode_image(src, name=name, min_size=max(spec.resize_size, spec.input_size))
        except images.ImageDecodeError as e:
            raise UserError(f"features: image {name} can no longer be decoded ({e.reason}); it "
                            "changed after the data stage verified it. Rerun: the data stage sees "
                            "the change and lists the file as skipped.") from None
        return view_fn(img, pos) if view_fn else resize.views(img, spec, crops, flip)

    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        pending: collections.deque = collections.deque()
        for pos, (src, name) in enumerate(zip(sources, names, strict=True)):
            pending.append(pool.submit(work, src, name, pos))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def default_workers() -> int:
    """Decoding threads: one per core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class BatchEmbedder:
    """One compiled backbone call over batches sharded on all local devices.

    Args:
      backbone: a `pipeline.models.registry.Backbone` (``.spec``, ``.params``, ``.embed``).
      batch_size: images per batch.
      views: V, rows per image fed to the backbone (test-time augmentation views).
      reduce: ``mean`` (average the V views: one row per image) or ``rows`` (keep V rows).
      out_dtype: dtype of the returned rows (``float32`` or ``float16``); cast on the device.
    """

    def __init__(self, backbone: Any, batch_size: int, views: int = 1, reduce: str = "mean",
                 out_dtype: str = "float32"):
        import jax
        import jax.numpy as jnp
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        self.backbone = backbone
        self.views = views
        self.rows_per_image = views if reduce == "rows" else 1
        self.devices = jax.local_devices()
        n_dev = len(self.devices)
        # Padded batch: a multiple of the device count so every device gets whole images.
        self.batch_size = batch_size
        self.padded = -(-batch_size // n_dev) * n_dev
        mesh = Mesh(np.array(self.devices), ("data",))
        self.in_sharding = NamedSharding(mesh, P("data"))
        replicated = NamedSharding(mesh, P())
        s = backbone.spec.input_size
        self.image_shape = (views, s, s, 3)
        out_dtype = jnp.dtype(out_dtype)
        self.out_dtype = np.dtype(out_dtype.name)
        mean_views = reduce == "mean" and views > 1

        local_rows = self.padded * views // n_dev
        step = images_per_step(local_rows)

        def embed_local(params, pixels):                 # this device's (b*V, S, S, 3) uint8
            if step == local_rows:
                feats = backbone.embed(params, pixels.astype(jnp.float32))  # (b*V, D) float32
            else:
                x = pixels.reshape(-1, step, *pixels.shape[1:])  # (b*V / step, step, S, S, 3)
                feats = jax.lax.map(lambda xi: backbone.embed(params, xi.astype(jnp.float32)), x)
                feats = feats.reshape(pixels.shape[0], -1)    # (b*V, D) float32
            if mean_views:
                feats = feats.reshape(-1, views, feats.shape[-1]).mean(axis=1)  # (b, D)
            return feats.astype(out_dtype)

        # Each device runs its own images, `step` at a time (see IMAGES_PER_STEP).
        embed = jax.shard_map(embed_local, mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data"))
        self.params = jax.device_put(backbone.params, replicated)
        pixels = jax.ShapeDtypeStruct((self.padded * views, s, s, 3), jnp.uint8, sharding=self.in_sharding)
        jitted = jax.jit(embed, in_shardings=(replicated, self.in_sharding), out_shardings=self.in_sharding)

        def compile_once() -> tuple[Any, float]:
            t0 = time.perf_counter()
            return jitted.lower(self.params, pixels).compile(), time.perf_counter() - t0

        # Compiled once, ahead of time, for the one padded batch shape every batch uses; in a
        # background thread, so that the first batches are decoded while XLA compiles.
        compiler = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="xla-compile")
        self._compiling = compiler.submit(compile_once)
        compiler.shutdown(wait=False)  # the thread ends once the compilation is done
        self._jax = jax

    @property
    def compile_seconds(self) -> float:
        """Seconds XLA took to compile the batch function (waits for the compilation)."""
        return self._compiling.result()[1]

    def embed(self, views_iter: Iterator[np.ndarray], n: int) -> np.ndarray:
        """Feature rows of the next `n` images of `views_iter`.

        Args:
          views_iter: yields uint8 (V, S, S, 3) per image (from `decoded_views`).
          n: how many images to take from it.

        Returns:
          (n * rows_per_image, D) array of `out_dtype`, in input order.
        """
        out: np.ndarray | None = None
        pending = None
        for start in range(0, n, self.batch_size):
            k = min(self.batch_size, n - start)
            # A fresh buffer each batch: on CPU, device_put may alias host memory, so a buffer
            # still being read by the previous batch must not be overwritten.
            batch = np.zeros((self.padded, *self.image_shape), np.uint8)  # zero rows = padding
            for i in range(k):
                batch[i] = next(views_iter)
            x = self._jax.device_put(batch.reshape(-1, *self.image_shape[1:]), self.in_sharding)
            result = self._compiling.result()[0](self.params, x)      # dispatched, not awaited
            if pending is not None:
                out = self._collect(out, pending, n)
            pending = (result, start, k)
        if pending is not None:
            out = self._collect(out, pending, n)
        if out is None:
            d = self.backbone.spec.feature_dim
            out = np.zeros((0, d), self.out_dtype)
        return out

    def _collect(self, out: np.ndarray | None, pending: tuple, n: int) -> np.ndarray:
        result, start, k = pending
        rows = np.asarray(result)                     # waits for the device; (padded * r, D)
        r = self.rows_per_image
        if out is None:
            out = np.empty((n * r, rows.shape[-1]), rows.dtype)
        out[start * r:(start + k) * r] = rows[:k * r]  # the padding rows are dropped here
        return out
