"""Backbone families as data: which module builds and converts each, and its converter's version.

A family module (e.g. `pipeline.models.resnet`) defines

  build(spec, dtype: str, depthwise: str) -> flax.linen.Module
      ``module.apply({"params": params["features"]}, normalised_pixels) -> (B, feature_dim)``
  convert(state: dict[str, np.ndarray], spec) -> {"features": pytree, "head": {"kernel", "bias"}}
      pure and checked (see `pipeline.models.convert.StateReader`); ``head`` is the ImageNet
      classifier as a dense layer on the pooled features
  load_state(path, spec) -> dict[str, np.ndarray]   optional: replaces the reader for
      ``spec.weights.format`` (``pth`` -> `torch_pickle`, ``h5`` -> every HDF5 dataset by path)

and is registered here with `register_family`. The converter's version lives in the registration,
not in the module, so listing backbones and their converted caches never imports jax.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Family:
    """A registered backbone family.

    Attributes:
      name: the family, as `BackboneSpec.family` names it.
      module: the module implementing build/convert (imported only to build: it imports jax).
      convert_version: bump it when convert's output changes; it is part of the converted
        params' cache name, so a bump invalidates those caches.
    """

    name: str
    module: str
    convert_version: str


FAMILIES: dict[str, Family] = {}


def register_family(name: str, module: str, convert_version: str) -> Family:
    """Register a family (once per name)."""
    if name in FAMILIES:
        raise ValueError(f"backbone family {name!r} is registered twice")
    FAMILIES[name] = Family(name, module, convert_version)
    return FAMILIES[name]


def convert_version(name: str) -> str:
    """The registered converter version of family `name` (for the family module's CONVERT_VERSION)."""
    return FAMILIES[name].convert_version


register_family("efficientnet_lite", "pipeline.models.efficientnet_lite", convert_version="1")
register_family("vgg", "pipeline.models.vgg", convert_version="1")
register_family("resnet", "pipeline.models.resnet", convert_version="1")
register_family("mobilenet_v2", "pipeline.models.mobilenet_v2", convert_version="1")
