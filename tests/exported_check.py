"""Run an exported classifier folder the way a user without this project would (a script, not a test).

    python -I tests/exported_check.py EXPORT_DIR FORMAT PHOTO [PHOTO ...]

Prints JSON: ``{"probs": [[...], ...], "modules": [top-level modules loaded]}``. It imports only
the folder's preprocess.py (PIL + numpy) and the format's runtime; the test checks from
``modules`` that neither this project (``pipeline``, ``stages``) nor flax was loaded.
"""

import json
import sys
from pathlib import Path


def main() -> None:
    folder, fmt, photos = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    sys.path.insert(0, str(folder))
    from preprocess import load

    x = load(photos)
    if fmt == "stablehlo":
        import jax
        import numpy as np

        model = jax.export.deserialize(bytearray((folder / "model.stablehlo").read_bytes()))
        probs = np.asarray(model.call(x))
    elif fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        probs = session.run(None, {"pixels": x})[0]
    elif fmt == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(folder / "model.tflite"))
        i = it.get_input_details()[0]["index"]
        it.resize_tensor_input(i, x.shape)
        it.allocate_tensors()
        it.set_tensor(i, x)
        it.invoke()
        probs = it.get_tensor(it.get_output_details()[0]["index"])
    else:
        raise SystemExit(f"unknown format {fmt}")
    modules = sorted({m.split(".")[0] for m in sys.modules})
    print(json.dumps({"probs": probs.tolist(), "modules": modules}))


if __name__ == "__main__":
    main()
