"""Helpers for pure, checked weight converters (numpy only, no jax).

A converter reads a flat ``{key: array}`` state (a PyTorch state dict, or the datasets of a Keras
.h5 file) through a `StateReader`: every `take` names the key and the shape it must have, and
`finish` fails if any key was never read. A checkpoint that does not match the architecture
config therefore fails loudly instead of loading half its weights.

  r = StateReader(state, "efficientnet_lite0")
  k = torch_conv_kernel(r.take("_conv_stem.weight", (32, 3, 3, 3)))
  r.skip_matching(r"\\.num_batches_tracked$")
  r.finish()
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

from pipeline.models.weights import WeightsError


class ConversionError(WeightsError):
    """Published weights do not match the architecture they are converted into."""


class StateReader:
    """Read a flat state dict key by key, checking shapes, and account for every key.

    Args:
      state: ``{key: array}`` as published.
      where: what is being converted (named in errors), e.g. the backbone name and file.
    """

    def __init__(self, state: Mapping[str, np.ndarray], where: str):
        self.state = state
        self.where = where
        self.unused = set(state)

    def take(self, key: str, shape: Sequence[int]) -> np.ndarray:
        """Return ``state[key]`` after checking it exists and has `shape`; mark it used."""
        if key not in self.state:
            near = sorted(k for k in self.state if k.split(".")[-1] == key.split(".")[-1])[:3]
            raise ConversionError(f"{self.where}: weight {key!r} is missing from the checkpoint "
                                  f"({len(self.state)} keys; similar: {near}). The file does not match this "
                                  f"architecture config.")
        arr = np.asarray(self.state[key])
        if tuple(arr.shape) != tuple(shape):
            raise ConversionError(f"{self.where}: weight {key!r} has shape {tuple(arr.shape)}, the architecture "
                                  f"expects {tuple(shape)}. The file does not match this architecture config.")
        self.unused.discard(key)
        return arr

    def skip_matching(self, pattern: str) -> list[str]:
        """Mark keys matching a regex as deliberately unused (e.g. BatchNorm ``num_batches_tracked``)."""
        rx = re.compile(pattern)
        hit = [k for k in self.unused if rx.search(k)]
        self.unused.difference_update(hit)
        return hit

    def finish(self) -> None:
        """Raise ConversionError if any key of the checkpoint was never read."""
        if self.unused:
            left = sorted(self.unused)
            raise ConversionError(f"{self.where}: {len(left)} checkpoint weights were not used by the "
                                  f"converter, e.g. {left[:5]}. The file has layers this architecture config "
                                  f"lacks (wrong variant?).")


def torch_conv_kernel(w: np.ndarray) -> np.ndarray:
    """PyTorch conv weight (O, I, kh, kw) -> Flax HWIO (kh, kw, I, O). Depthwise (C,1,k,k) -> (k,k,1,C)."""
    return np.transpose(w, (2, 3, 1, 0))


def torch_linear_kernel(w: np.ndarray) -> np.ndarray:
    """PyTorch Linear weight (out, in) -> Flax Dense kernel (in, out)."""
    return np.transpose(w, (1, 0))


def flatten_params(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict of arrays -> ``{"a/b/kernel": array}`` (for .npz caches)."""
    out: dict[str, np.ndarray] = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten_params(v, key))
        else:
            out[key] = np.asarray(v)
    return out


def unflatten_params(flat: Mapping[str, np.ndarray]) -> dict:
    """Inverse of `flatten_params`."""
    tree: dict = {}
    for key, v in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree
