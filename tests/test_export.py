"""`export`: each format, run in a fresh process that imports neither this project nor flax, gives
the probabilities `predict` gives on the same real photos."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.predict_fixtures import PHOTOS, ROOT, classifiers, needs_photos, trained_run  # noqa: F401

FORMATS = ("stablehlo", "onnx", "tflite")
# float32 throughout. StableHLO is predict's own program (same ops, same order): ~1e-7. ONNX and
# TFLite get the library depthwise convolution instead of predict's shifted multiply-adds on CPU,
# and their own kernels sum in another order: measured 5e-7 on random crops. preprocess.py
# reproduces pipeline.images bit for bit (same PIL calls), so the pixels are identical. 1e-4
# leaves margin; a wrong normalisation, crop or flip moves probabilities by 1e-2 or more.
ATOL = 1e-4


@pytest.mark.slow
@needs_photos
def test_exported_formats_match_predict_in_a_fresh_process(trained_run, classifiers, tmp_path, monkeypatch):
    from pipeline import cli
    from pipeline.predict.predict import predict_files

    cache, run = trained_run
    out = tmp_path / "classifier"
    # cli.main sets these with setdefault for a real process; keep them out of the test session.
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    args = ["export", "--out", str(out), "--run", run.keys["heads"], "--head", "mlp", "--cache-dir", str(cache),
            "--no-check"]  # each format is checked below, in a fresh process
    assert cli.main([*args, *[a for f in FORMATS for a in ("--format", f)]]) == 0
    for name in ("model.stablehlo", "model.onnx", "model.tflite", "labels.txt", "preprocess.json",
                 "preprocess.py", "README.md"):
        assert (out / name).is_file(), name
    assert (out / "labels.txt").read_text().splitlines() == run.classes
    card = (out / "README.md").read_text()
    assert "efficientnet_lite0" in card and "| test |" in card and "onnxruntime" in card

    photos = [str(PHOTOS / "cat" / "cat.3.jpg"), str(PHOTOS / "dog" / "dog.3.jpg"), str(PHOTOS / "dog" / "dog.4.jpg")]
    clf, fn = classifiers["mlp"]
    want = np.stack([p.probs for p in predict_files(clf, photos, batch_size=4, fn=fn).predictions])
    for fmt in FORMATS:
        # -I: no PYTHONPATH, no user site, cwd not on sys.path: only the venv's packages.
        proc = subprocess.run([sys.executable, "-I", str(ROOT / "tests" / "exported_check.py"), str(out), fmt,
                               *photos], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, f"{fmt}: {proc.stderr[-3000:]}"
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
        loaded = set(answer["modules"])
        assert not loaded & {"pipeline", "stages"}, f"{fmt} loaded the project"
        if fmt == "stablehlo":
            assert "flax" not in loaded and "jax" in loaded
        got = np.asarray(answer["probs"], np.float32)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=ATOL, err_msg=fmt)
