"""Backbone registry: names -> specs (cheap, no jax) and `load_backbone` (builds, converts, caches).

Specs are data in the zoo modules (`ZOO_MODULES`); code lives in family modules, registered as
data with their converter's version in `pipeline.models.families` (`FAMILIES`; the family
module's contract is there).

Converted params are cached once per weights checksum and converter version
(`pipeline.models.converted`); a damaged cache is rebuilt from the published weights.

Importing this module must not import jax: `get_spec`, `names`, `specs` and `describe` are used
by the runner and the CLI to validate params and list backbones instantly.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.errors import UserError
from pipeline.models import converted
from pipeline.models import weights as weights_lib
from pipeline.models.families import FAMILIES  # family name -> Family (module, convert version)
from pipeline.models.spec import BackboneSpec

# Modules defining ``SPECS = [BackboneSpec, ...]``; a missing one is skipped (helpers land separately).
ZOO_MODULES: tuple[str, ...] = ("pipeline.models.zoo_lite", "pipeline.models.zoo_keras")

DTYPES = ("float32", "bfloat16")


class UnknownBackboneError(UserError, KeyError):
    """A backbone name that is not registered; the message lists the registered ones."""

    def __str__(self) -> str:
        return str(self.args[0])


@functools.cache
def _specs_by_name() -> dict[str, BackboneSpec]:
    out: dict[str, BackboneSpec] = {}
    for mod_name in ZOO_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name == mod_name:
                continue  # that zoo has not landed (or was removed): its backbones are simply absent
            raise
        for spec in mod.SPECS:
            if spec.name in out:
                raise ValueError(f"backbone {spec.name!r} is registered twice ({mod_name})")
            out[spec.name] = spec
    return out


def names() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(_specs_by_name())


def specs() -> list[BackboneSpec]:
    """All registered specs, sorted by name."""
    by = _specs_by_name()
    return [by[n] for n in sorted(by)]


def check_names(backbones: Sequence[str], key: str) -> None:
    """Raise a ParamsError naming ``key[i]`` for the first name in `backbones` not registered."""
    from pipeline.params import ParamsError

    for i, b in enumerate(backbones):
        if b not in names():
            raise ParamsError(f"{key}[{i}]: {b!r} is not a registered backbone; choose from "
                              f"{', '.join(names())}.")


def get_spec(name: str) -> BackboneSpec:
    """Spec of a registered backbone (no jax import).

    Raises:
      UnknownBackboneError: `name` is not registered; the message lists near matches and all names.
    """
    by = _specs_by_name()
    if name in by:
        return by[name]
    import difflib

    near = difflib.get_close_matches(name, list(by), n=3)
    hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
    raise UnknownBackboneError(f"Unknown backbone {name!r}.{hint} Registered: {', '.join(sorted(by))}.")


def family_module(spec: BackboneSpec) -> Any:
    """Import the module implementing `spec.family` (this imports jax/flax)."""
    if spec.family not in FAMILIES:
        raise UnknownBackboneError(f"Backbone {spec.name!r} has family {spec.family!r}, which has no entry in "
                                   f"pipeline.models.families ({', '.join(sorted(FAMILIES))}).")
    return importlib.import_module(FAMILIES[spec.family].module)


def read_state(path: Path, spec: BackboneSpec, family: Any) -> dict[str, np.ndarray]:
    """Read a published weight file into a flat ``{key: array}`` dict."""
    if hasattr(family, "load_state"):
        return family.load_state(path, spec)
    if spec.weights.format == "pth":
        from pipeline.models.torch_pickle import load_state_dict

        return load_state_dict(path)
    if spec.weights.format == "h5":
        import h5py

        out: dict[str, np.ndarray] = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda k, obj: out.__setitem__(k, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return out
    raise ValueError(f"{spec.name}: unknown weights format {spec.weights.format!r}")


def load_params(spec: BackboneSpec, cache_dir: str | os.PathLike, *, progress: Callable | None = None) -> dict:
    """Converted float32 params for `spec`: from the cache, or fetched + verified + converted + cached."""
    family = family_module(spec)
    path = converted.converted_path(spec, cache_dir, family.CONVERT_VERSION)
    params = converted.load(path, spec)
    if params is None:
        src = weights_lib.fetch_weights(spec.weights, cache_dir, progress=progress)
        params = family.convert(read_state(src, spec, family), spec)
        # Recomputed: a first download of weights without a published checksum has just pinned one.
        converted.save(converted.converted_path(spec, cache_dir, family.CONVERT_VERSION), params, spec)
    return params


# ---------------------------------------------------------------------------------------------
# Backbone


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A loaded backbone: spec, params and two pure, jitted functions.

    Attributes:
      spec: its `BackboneSpec`.
      params: ``{"features": ..., "head": {"kernel": (D, 1000), "bias": (1000,)}}`` (float32).
      module: the Flax module (``module.apply({"params": params["features"]}, normalised)``).
      dtype: computation dtype of `embed` (``float32`` or ``bfloat16``).
    """

    spec: BackboneSpec
    params: Any
    module: Any
    dtype: str
    _embed: Callable = dataclasses.field(repr=False)
    _logits: Callable = dataclasses.field(repr=False)

    def embed(self, params: Any, pixels: Any) -> Any:
        """Pooled features of images.

        Args:
          params: `self.params` (or a pytree of the same structure).
          pixels: (B, S, S, 3) float32 RGB in [0, 255], S = spec.input_size, already resized and
            cropped; normalised inside (differentiable w.r.t. pixels).

        Returns:
          (B, spec.feature_dim) float32.
        """
        return self._embed(params, pixels)

    def imagenet_logits(self, params: Any, features: Any) -> Any:
        """ImageNet logits (B, spec.num_classes) from pooled features (B, D), float32."""
        return self._logits(params, features)


def load_backbone(name: str, cache_dir: str | os.PathLike, dtype: str = "float32",
                  depthwise: str = "auto") -> Backbone:
    """Build a registered backbone with its converted pretrained ImageNet weights.

    Args:
      name: registered name (see `names()`).
      cache_dir: cache root; downloads and converted params live under ``<cache_dir>/weights``.
      dtype: ``float32`` or ``bfloat16`` (compute in bf16, return float32 features).
      depthwise: depthwise-conv implementation for families that have one: ``auto``, ``xla``,
        ``shifted`` (see `pipeline.models.layers`).

    Returns:
      A `Backbone`.

    Raises:
      UnknownBackboneError, WeightsError (download/verify/convert problems), ValueError (bad dtype).
    """
    spec = get_spec(name)
    _check_options(dtype, depthwise)
    return make_backbone(spec, load_params(spec, cache_dir), dtype, depthwise)


def random_params(spec: BackboneSpec, seed: int = 0) -> dict:
    """Random params with the structure `load_params` returns (for speed tests without weights).

    Filled on the host with numpy (jitting ``module.init`` compiles one RNG kernel per parameter,
    which takes tens of seconds): leaves named ``bias``/``mean``/``beta`` are 0, ``scale``/``var``/
    ``gamma`` are 1, anything else is N(0, 1/fan_in) with fan_in = prod(shape[:-1]).

    Args:
      spec: a registered spec.
      seed: numpy seed.

    Returns:
      ``{"features": ..., "head": {"kernel": (D, C), "bias": (C,)}}`` as float32 numpy arrays.
    """
    import jax
    import jax.numpy as jnp

    module = family_module(spec).build(spec, "float32", "xla")
    s = spec.input_size
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, s, s, 3), jnp.float32))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name in ("bias", "mean", "beta"):
            return np.zeros(leaf.shape, np.float32)
        if name in ("scale", "var", "gamma"):
            return np.ones(leaf.shape, np.float32)
        fan_in = int(np.prod(leaf.shape[:-1])) or 1
        return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    feats = jax.tree_util.tree_map_with_path(fill, shapes["params"])
    head = {"kernel": fill(("kernel",), jax.ShapeDtypeStruct((spec.feature_dim, spec.num_classes), jnp.float32)),
            "bias": np.zeros((spec.num_classes,), np.float32)}
    return {"features": feats, "head": head}


def make_backbone(spec: BackboneSpec, params: Any, dtype: str = "float32", depthwise: str = "auto") -> Backbone:
    """Wrap a spec and params (converted or `random_params`) into a `Backbone` with jitted functions."""
    _check_options(dtype, depthwise)
    import jax
    import jax.numpy as jnp

    from pipeline.models import layers

    module = family_module(spec).build(spec, dtype, depthwise)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    compute = jnp.dtype(dtype)

    def embed(p, pixels):
        x = layers.normalize_pixels(jnp.asarray(pixels, jnp.float32), spec.normalization, spec.mean, spec.std)
        feats = module.apply({"params": p["features"]}, x.astype(compute))  # (B, D)
        return feats.astype(jnp.float32)

    def logits(p, feats):
        head = p["head"]
        return jnp.asarray(feats, jnp.float32) @ head["kernel"] + head["bias"]  # (B, C)

    return Backbone(spec=spec, params=params, module=module, dtype=dtype, _embed=jax.jit(embed),
                    _logits=jax.jit(logits))


def _check_options(dtype: str, depthwise: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not allowed; choose one of {', '.join(DTYPES)}")
    from pipeline.models.depthwise import DEPTHWISE_IMPLS

    if depthwise not in DEPTHWISE_IMPLS:
        raise ValueError(f"depthwise: {depthwise!r} is not allowed; choose one of {', '.join(DEPTHWISE_IMPLS)}")


def describe(cache_dir: str | os.PathLike) -> list[dict]:
    """One row per registered backbone for `pipeline backbones` (no jax, no downloads).

    Returns:
      Dicts with ``name``, ``family``, ``input_size``, ``resize_size``, ``normalization``,
      ``feature_dim``, ``params`` (feature-extractor parameter count, ImageNet head excluded; None
      if unknown), ``flops`` (per image or None), ``licence``,
      ``weights_url``, ``weights_cached`` (published file present locally) and ``converted_cached``.
    """
    rows = []
    for spec in specs():
        conv_version = FAMILIES[spec.family].convert_version if spec.family in FAMILIES else None
        conv = None
        if conv_version is not None:
            p = converted.converted_path(spec, cache_dir, conv_version)
            conv = p if p.is_file() else None
        manifest = converted.read_manifest(conv) if conv else None
        params = manifest["params"] if manifest else spec.extra.get("params")
        rows.append({
            "name": spec.name, "family": spec.family, "input_size": spec.input_size,
            "resize_size": spec.resize_size, "normalization": spec.normalization,
            "feature_dim": spec.feature_dim, "params": params, "flops": spec.flops,
            "licence": spec.weights.licence, "weights_url": spec.weights.url,
            "weights_cached": weights_lib.cached_path(spec.weights, cache_dir) is not None,
            "converted_cached": manifest is not None,
        })
    return rows
