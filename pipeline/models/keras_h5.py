"""Read Keras Applications ``.h5`` weight files into ``{"<layer>/<role>": array}``, and align layer names.

The published Keras Applications files use the legacy (Keras 1/2) HDF5 weights layout:

    /                       attrs: layer_names = [b"input_1", b"block1_conv1", ...]
    /block1_conv1           attrs: weight_names = [b"block1_conv1_W_1:0", b"block1_conv1_b_1:0"]
    /block1_conv1/block1_conv1_W_1:0    dataset (3, 3, 3, 64)

(or the same under a ``model_weights`` group when a whole model was saved). Weight names changed
over the years for the same role: Keras 1 wrote ``block1_conv1_W_1:0`` (the VGG files still carry
those), Keras 2 ``conv1_conv/kernel:0`` (ResNet50, MobileNetV2), Keras 3 ``block1_conv1/kernel``.
`read_keras_h5` maps all of them to one canonical key, ``"<layer>/<role>"`` with role one of
`ROLES`, so the family converters never see the history.

Keras loads these files by layer order, not by name, so some published files name layers
differently from current Keras (ResNet50's head is ``probs``); `align_layers` gives the file's
layers the architecture's current names (by name when they agree, else by position, as Keras
does). Converters then read the dict through `pipeline.models.convert.StateReader`: every key and
shape checked, nothing left over. h5py is imported lazily.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from pipeline.models.weights import WeightsError

# Roles a weight can play, in Keras's own (modern) names.
ROLES = ("kernel", "depthwise_kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")

# Keras 1 suffixes -> modern role. Keras 1's "running_std" held the batch variance (what its TF
# backend's moments returned) despite its name. (None of the four files here has BatchNorm from
# Keras 1; the mapping is for completeness.)
_KERAS1_ROLES = {"W": "kernel", "b": "bias", "gamma": "gamma", "beta": "beta",
                 "running_mean": "moving_mean", "running_std": "moving_variance",
                 "depthwise_kernel": "depthwise_kernel"}
_KERAS1_NAME = re.compile(r"^(?P<layer>.+?)_(?P<role>W|b|gamma|beta|running_mean|running_std|depthwise_kernel)(?:_\d+)?$")


class KerasWeightsError(WeightsError):
    """A Keras weights file is unreadable, or does not hold what the architecture needs."""


def _corrupt(path: Path, detail: str) -> KerasWeightsError:
    return KerasWeightsError(
        f"{path}: cannot read this Keras weights file ({detail}). It is probably truncated or "
        f"corrupt (an interrupted download?): delete it and rerun to download it again.")


def canonical_role(weight_name: str, layer: str) -> str:
    """The role (one of `ROLES`) of a stored weight, from its name in any Keras version.

    Args:
      weight_name: name from the layer's ``weight_names`` attribute (``block1_conv1_W_1:0``,
        ``conv1_conv/kernel:0``, ``resnet50/conv1_conv/kernel:0``, ``block1_conv1/kernel``).
      layer: the layer group's name (for the error message).

    Returns:
      The role, e.g. ``"kernel"``.

    Raises:
      ValueError: the name matches no known naming scheme.
    """
    base = weight_name.split("/")[-1]
    base = re.sub(r":\d+$", "", base)  # TF variable suffix ":0"
    if base in ROLES:
        return base
    m = _KERAS1_NAME.match(base)
    if m:
        return _KERAS1_ROLES[m.group("role")]
    raise ValueError(f"layer {layer!r}: weight name {weight_name!r} is not a known Keras weight "
                     f"name (expected one ending in {', '.join(ROLES)} or a Keras-1 _W/_b name)")


def _str_list(values: Iterable) -> list[str]:
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _read_attr_list(group, name: str) -> list[str] | None:
    """A list attribute as Keras writes it: whole, or chunked as name0, name1, ... when large."""
    if name in group.attrs:
        return _str_list(group.attrs[name])
    if f"{name}0" not in group.attrs:
        return None
    out: list[str] = []
    i = 0
    while f"{name}{i}" in group.attrs:
        out += _str_list(group.attrs[f"{name}{i}"])
        i += 1
    return out


def read_keras_h5(path: str | Path) -> dict[str, np.ndarray]:
    """Read every weight of a legacy-layout Keras ``.h5`` weights file.

    Args:
      path: the ``.h5`` file (Keras Applications ``*_weights_tf_dim_ordering_tf_kernels*.h5``,
        or anything saved with Keras's legacy ``save_weights``/``model.save`` to HDF5).

    Returns:
      ``{"<layer>/<role>": array}`` (e.g. ``"block1_conv1/kernel"``), arrays as stored
      (TF layout: conv kernels (kh, kw, in, out), depthwise (kh, kw, C, 1), dense (in, out)).
      Layers without weights (pooling, activations) are absent.

    Raises:
      KerasWeightsError: the file is missing, truncated, corrupt, or not a Keras weights file.
    """
    import h5py  # local: keep `import pipeline.models.keras_h5` light for the registry

    path = Path(path)
    if not path.is_file():
        raise KerasWeightsError(f"{path}: weights file not found; rerun to download it.")
    try:
        f = h5py.File(path, "r")
    except OSError as e:  # bad signature, truncated superblock, ...
        raise _corrupt(path, str(e).splitlines()[0]) from e
    out: dict[str, np.ndarray] = {}
    with f:
        try:
            root = f
            layer_names = _read_attr_list(f, "layer_names")
            if layer_names is None and "model_weights" in f:
                root = f["model_weights"]
                layer_names = _read_attr_list(root, "layer_names")
            if layer_names is None:
                raise KerasWeightsError(
                    f"{path}: not a Keras HDF5 weights file (no 'layer_names' attribute at the root "
                    f"or under 'model_weights'). Keras 3 '.weights.h5' files use another layout; "
                    f"point the backbone at the published Keras Applications file instead.")
            for layer in layer_names:
                if layer not in root:
                    raise _corrupt(path, f"layer group {layer!r} listed in layer_names is missing")
                group = root[layer]
                for wname in _read_attr_list(group, "weight_names") or []:
                    try:
                        role = canonical_role(wname, layer)
                    except ValueError as e:
                        raise KerasWeightsError(f"{path}: {e}") from e
                    key = f"{layer}/{role}"
                    if key in out:
                        raise KerasWeightsError(f"{path}: layer {layer!r} holds two weights with role "
                                                f"{role!r} ({wname!r} is the second)")
                    if wname not in group:
                        raise _corrupt(path, f"dataset {layer}/{wname} listed in weight_names is missing")
                    out[key] = np.asarray(group[wname][()])
        except KerasWeightsError:
            raise
        except (OSError, KeyError, RuntimeError, ValueError) as e:  # h5py read errors mid-file
            raise _corrupt(path, f"{type(e).__name__}: {e}") from e
    return out


def layer_names(state: Mapping[str, np.ndarray]) -> list[str]:
    """Layers of a `read_keras_h5` dict, in file order (each once)."""
    return list(dict.fromkeys(key.partition("/")[0] for key in state))


def align_layers(state: Mapping[str, np.ndarray], expected: Sequence[str], *,
                 legacy_names: Mapping[str, str] | None = None,
                 source: str = "<weights>") -> dict[str, np.ndarray]:
    """Give the file's layers the architecture's current Keras names.

    Keras loads these files by layer ORDER (``legacy_h5_format.load_weights_from_hdf5_group``
    pairs the i-th weighted layer of the file with the i-th of the model), so the published files
    never had to use the names current Keras gives its layers, and some don't: ResNet50's head is
    ``probs``, MobileNetV2's ``Logits``, and files converted by third parties may name every
    layer differently. This function:

    1. renames known legacy names (`legacy_names`, e.g. ``{"probs": "predictions"}``);
    2. if the file's layers are then exactly `expected` (as a set), returns them: converters match
       by name, which is stricter than Keras;
    3. otherwise falls back to what Keras does, pairing layers by position, but only when the counts
       agree and no name that exists in both sits at a different position (a reordered file).
    Shapes are checked afterwards by the converter, as Keras checks them.

    Args:
      state: ``{"<layer>/<role>": array}`` in file order (from `read_keras_h5`).
      expected: the architecture's weighted layers in Keras's order (``model.layers`` with weights).
      legacy_names: ``{old name: current name}``.
      source: file named in errors.

    Returns:
      A new dict keyed by the expected layer names.

    Raises:
      KerasWeightsError: the layer counts differ, or the names contradict the order.
    """
    renames = dict(legacy_names or {})
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        layer, _, role = key.partition("/")
        new = f"{renames.get(layer, layer)}/{role}"
        if new in out:
            raise KerasWeightsError(f"{source}: holds both {key!r} and {new!r}; cannot tell which is the "
                                    f"real one. The file is not a Keras Applications weights file.")
        out[new] = value
    have = layer_names(out)
    if set(have) == set(expected):
        return out
    if len(have) != len(expected):
        missing = [n for n in expected if n not in have][:5]
        raise KerasWeightsError(
            f"{source}: the file has {len(have)} layers with weights, this architecture has "
            f"{len(expected)} (e.g. missing {missing}). The file is for a different architecture "
            f"or variant; check that the backbone name matches the weights file.")
    for i, name in enumerate(have):
        if name in expected and expected.index(name) != i:
            raise KerasWeightsError(
                f"{source}: layer {name!r} is weighted layer #{i} in the file but #{expected.index(name)} "
                f"in this architecture, and other names differ too; refusing to pair layers by "
                f"position. The file is for a different architecture.")
    by_pos = dict(zip(have, expected))
    return {f"{by_pos[k.partition('/')[0]]}/{k.partition('/')[2]}": v for k, v in out.items()}
