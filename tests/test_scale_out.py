"""The features stage through the CLI as 2 real JAX processes, and over 8 virtual devices.

Real efficientnet_lite0 weights, real photos, real `jax.distributed` (localhost coordinator,
gloo CPU collectives): the features must match a plain 1-process, 1-device run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.features.artifact import load_split

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "cats-dogs-dev"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"real photos not found at {PHOTOS} "
                                                   "(../shared/data exists only in the workplace)"),
]

COMMON = ["-S", "data.source=folder", "-S", f"data.path={PHOTOS}", "-S", "data.max_per_class=4",
          "-S", "features.batch_size=4", "-S", "features.shard_size=4"]


def _env() -> dict:
    # A shared weights cache keeps conversion out of the timing; each run has its own output cache.
    return {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cache: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", "features", "--cache-dir",
                             str(cache), *COMMON, *extra], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _features_dir(cache: Path) -> Path:
    (out,) = [p for p in (cache / "features").iterdir() if not p.name.endswith(".partial")]
    return out


def _check(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("one")
    _check(_run(cache))
    return _features_dir(cache)


def _assert_same(a_dir: Path, b_dir: Path) -> None:
    for split in ("train", "val", "test"):
        a, b = load_split(a_dir, split), load_split(b_dir, split)
        assert a[2] == b[2] and np.array_equal(a[1], b[1])   # same images, same order, same labels
        # Each device runs a different per-device batch (4 vs 2 vs 1 images); XLA:CPU may block
        # the convolutions differently, so allow float32 rounding differences, nothing more.
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)


def test_two_jax_processes_match_one_process(reference, tmp_path):
    port = _free_port()
    procs = [_run(tmp_path, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                  "--process-id", str(i), "--cpu-devices", "2") for i in range(2)]
    for p in procs:
        _check(p)
    out = _features_dir(tmp_path)
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["process_count"] == 2
    # Both processes computed a share of the images.
    per_process = manifest["summary"]["computed_per_process"]
    assert len(per_process) == 2 and min(per_process) > 0
    assert sum(per_process) == manifest["summary"]["images"]
    _assert_same(reference, out)


def test_eight_virtual_devices_in_one_process_match(reference, tmp_path):
    _check(_run(tmp_path, "--cpu-devices", "8"))
    _assert_same(reference, _features_dir(tmp_path))
