"""Serialise the classifier function (uint8 (B, S, S, 3) crops -> (B, C) probabilities) per format.

Each writer takes a pure JAX function of the pixels alone (the weights are closed over, so they
become constants of the exported program) and writes one file. The batch dimension is symbolic
in every format: one file serves batch 1 and batch 32.

- ``stablehlo``: `jax.export` (``Exported.serialize()``), loadable with jax alone
  (``jax.export.deserialize(bytearray(data)).call(x)``), no flax or project code. Lowered for
  the platform the export runs on (``platforms`` in preprocess.json).
- ``onnx``: `jax2onnx` (tried first and it converts every op of the registered backbones;
  onnxruntime agrees with jax within 1e-6). The jax2tf + tf2onnx path was not needed.
- ``tflite``: `jax.experimental.jax2tf` with ``native_serialization=False`` (TF ops, which
  the TFLite converter understands; the native mode wraps the program in an XlaCallModule op
  TFLite cannot run), then ``tf.lite.TFLiteConverter`` from tensorflow-cpu; runs in
  ai-edge-litert's interpreter. ``native_serialization=False`` is deprecated in jax 0.10 and may
  disappear in a later jax: this path works with the pinned jax 0.10.2.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from pipeline.errors import UserError

FORMATS = ("stablehlo", "onnx", "tflite")
FILES = {"stablehlo": "model.stablehlo", "onnx": "model.onnx", "tflite": "model.tflite"}
#: What each format needs beyond the base install (``pip install -e '.[export]'``).
NEEDS = {"stablehlo": (), "onnx": ("jax2onnx", "onnx", "onnxruntime"), "tflite": ("tensorflow", "ai_edge_litert")}


def require(fmt: str) -> None:
    """A UserError naming the extra to install when `fmt`'s converter or runtime is missing."""
    import importlib.util

    missing = [m for m in NEEDS[fmt] if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"--format {fmt} needs {', '.join(missing)}: pip install -e '.[export]'.")


def write(fmt: str, fn: Callable, size: int, path: Path) -> float:
    """Write `fn` in `fmt` to `path`; returns the seconds the conversion took.

    Args:
      fmt: one of `FORMATS`.
      fn: uint8 (B, S, S, 3) -> float32 (B, C), pure JAX, weights closed over.
      size: S.
      path: the file to write.
    """
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}.")
    require(fmt)
    t0 = time.perf_counter()
    {"stablehlo": _stablehlo, "onnx": _onnx, "tflite": _tflite}[fmt](fn, size, path)
    return time.perf_counter() - t0


def _stablehlo(fn: Callable, size: int, path: Path) -> None:
    import jax
    import jax.numpy as jnp

    b, = jax.export.symbolic_shape("b")
    exported = jax.export.export(jax.jit(fn))(jax.ShapeDtypeStruct((b, size, size, 3), jnp.uint8))
    path.write_bytes(exported.serialize())


def _onnx(fn: Callable, size: int, path: Path) -> None:
    import jax
    import jax.numpy as jnp
    from jax2onnx import to_onnx

    b, = jax.export.symbolic_shape("batch")
    model = to_onnx(fn, [jax.ShapeDtypeStruct((b, size, size, 3), jnp.uint8)], model_name="classifier",
                    input_names=["pixels"], output_names=["probabilities"])
    path.write_bytes(model.SerializeToString())


def _tflite(fn: Callable, size: int, path: Path) -> None:
    import warnings

    import tensorflow as tf
    from jax.experimental import jax2tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # native_serialization=False: see module doc
        converted = jax2tf.convert(fn, polymorphic_shapes=[f"(b, {size}, {size}, 3)"],
                                   native_serialization=False)
    tf_fn = tf.function(converted, autograph=False,
                        input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="pixels")])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([tf_fn.get_concrete_function()], tf_fn)
    path.write_bytes(converter.convert())


#: Three lines that load each format and run it on ``x`` (uint8 (B, S, S, 3) from preprocess.py).
LOAD_SNIPPETS = {
    "stablehlo": ("import jax, numpy as np\n"
                  "model = jax.export.deserialize(bytearray(open('model.stablehlo', 'rb').read()))\n"
                  "probs = np.asarray(model.call(x))"),
    "onnx": ("import onnxruntime as ort\n"
             "session = ort.InferenceSession('model.onnx', providers=['CPUExecutionProvider'])\n"
             "probs = session.run(None, {'pixels': x})[0]"),
    "tflite": ("from ai_edge_litert.interpreter import Interpreter\n"
               "it = Interpreter('model.tflite'); i = it.get_input_details()[0]['index']; "
               "it.resize_tensor_input(i, x.shape); it.allocate_tensors()\n"
               "it.set_tensor(i, x); it.invoke(); probs = it.get_tensor(it.get_output_details()[0]['index'])"),
}
