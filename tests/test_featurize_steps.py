"""The features pass runs each device's images through the backbone one at a time on a CPU.

What that promises: an image's feature row is the same bits whatever batch it lands in, where
in the batch, and with how much padding; and it equals a whole-batch call of the backbone up to
float rounding. A real network (EfficientNet-Lite0, real weights) on random pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lite0():
    from pipeline.models import registry

    return registry.load_backbone("efficientnet_lite0", ROOT / "cache")


def test_rows_do_not_depend_on_the_batch(lite0):
    import jax

    from pipeline.featurize import BatchEmbedder, images_per_step

    assert jax.default_backend() != "cpu" or images_per_step(32) == 1
    pixels = np.random.default_rng(0).integers(0, 256, (5, 224, 224, 3), dtype=np.uint8)
    by_4 = BatchEmbedder(lite0, 4).embed(iter(pixels[:, None]), 5)       # batches of 4 and 1 (+3 padding)
    by_3 = BatchEmbedder(lite0, 3).embed(iter(pixels[::-1, None]), 5)    # reversed, batches of 3 and 2
    assert by_4.shape == (5, 1280)
    if jax.default_backend() == "cpu":
        assert np.array_equal(by_4, by_3[::-1])  # one image per step: the same program for each
    whole = np.asarray(lite0.embed(lite0.params, pixels.astype(np.float32)))
    np.testing.assert_allclose(by_4, whole, rtol=1e-5, atol=1e-5)
