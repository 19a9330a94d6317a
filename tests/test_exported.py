"""persistent_jit: traces saved by one process are loaded by the next, and bad files are retraced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jax import export
from pipeline.exported import persistent_jit

mode = sys.argv[1]
if mode == "load":
    def refuse(*a, **k):
        raise AssertionError("traced again although a saved trace exists")
    export.export = refuse

def make(scale):
    def fn(x, params):
        return {"y": jnp.tanh(x @ params["w"]) * scale, "n": jnp.sum(x > 0)}
    return fn, persistent_jit(fn, name="test.fn", config=(scale,))

fn, f = make(3.0)
x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
params = {"w": np.eye(4, 2, dtype=np.float32)}
out = f(x, params)
again = f(x, params)  # second call in the same process: the in-memory runner
ref = jax.jit(fn)(x, params)
if mode == "variants":  # another shape, another config: each its own saved trace
    f(np.ones((5, 4), np.float32), params)
    _, g = make(4.0)
    assert np.allclose(np.asarray(g(x, params)["y"]), np.asarray(out["y"]) * 4 / 3, atol=1e-6)
print(json.dumps({"y": np.asarray(out["y"]).tolist(), "n": int(out["n"]),
                  "same_as_jit": bool(np.allclose(out["y"], ref["y"]) and int(ref["n"]) == int(out["n"])),
                  "repeat_equal": bool(np.array_equal(out["y"], again["y"]))}))
"""


def _run(mode: str, cache: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["PYTHONPATH"] = str(ROOT)
    if cache is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    r = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_saved_trace_is_reused_by_a_new_process_and_a_corrupt_one_is_replaced(tmp_path):
    cache = tmp_path / "jax"
    first = _run("save", cache)
    assert first["same_as_jit"] and first["repeat_equal"]
    saved = sorted((cache / "exports").glob("test.fn-*.bin"))
    assert len(saved) == 1 and saved[0].stat().st_size > 0

    # A new process loads the file: exporting again would raise inside it.
    second = _run("load", cache)
    assert second == first

    # A truncated file (a killed writer, a full disk) is traced again and rewritten.
    saved[0].write_bytes(saved[0].read_bytes()[:40])
    third = _run("save", cache)
    assert third == first
    assert saved[0].stat().st_size > 40
    assert not list((cache / "exports").glob("*.tmp"))


def test_each_shape_and_config_gets_its_own_trace(tmp_path):
    cache = tmp_path / "jax"
    _run("variants", cache)
    assert len(list((cache / "exports").glob("test.fn-*.bin"))) == 3
