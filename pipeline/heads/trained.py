"""Fitted heads on disk, and loading them back as pure JAX functions for the gradient stages.

A heads folder holds ``heads.json`` (class names, and per head its kind and architecture) and one
``<name>.npz`` of parameters per head, flattened with ``/``-joined keys. Feature standardisation is
folded into the first layer before saving, so a loaded head takes raw backbone features:
``(x - mu) / sigma @ W + b == x @ (W / sigma) + (b - (mu / sigma) @ W)``.

A head fitted on several backbones' features (``backbone.name`` a list) takes their raw features
concatenated in list order; its config's ``blocks`` (``[{"backbone", "dim"}, ...]``) and
``fuse`` (``l2``: each block scaled to unit norm first) say how, and `load_head` applies them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from pipeline.models.convert import flatten_params, unflatten_params

INDEX = "heads.json"


@dataclasses.dataclass(frozen=True)
class TrainedHead:
    """A fitted head that maps backbone features to class logits.

    Attributes:
      name: ``logreg`` or ``mlp``.
      kind: ``linear`` or ``mlp``.
      classes: class names, index = label.
      params: the head's parameters (a pytree of jax arrays).
      config: architecture settings the apply function was built from.
    """

    name: str
    kind: str
    classes: list[str]
    params: Any
    config: Mapping[str, Any]
    apply_fn: Callable[[Any, Any], Any] = dataclasses.field(repr=False)

    def logits(self, params: Any, features: Any) -> Any:
        """(B, D) raw backbone features -> (B, C) logits; pure JAX, differentiable in both args."""
        return self.apply_fn(params, features)


def fold_standardization(first_kernel: np.ndarray, first_bias: np.ndarray, mean: np.ndarray | None,
                         scale: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``(x - mean) / scale`` into the first affine layer ``x @ kernel + bias``.

    Args:
      first_kernel: (D, H) kernel; first_bias: (H,).
      mean, scale: (D,) standardisation statistics, or None when features were used raw.

    Returns:
      (kernel, bias) that take raw features. Computed in float64, returned as float32.
    """
    if mean is None:
        return first_kernel.astype(np.float32), first_bias.astype(np.float32)
    k = first_kernel.astype(np.float64) / scale.astype(np.float64)[:, None]
    b = first_bias.astype(np.float64) - mean.astype(np.float64) @ k
    return k.astype(np.float32), b.astype(np.float32)


def save_head(heads_dir: Path, name: str, kind: str, params: Mapping[str, Any],
              config: Mapping[str, Any], classes: Sequence[str]) -> None:
    """Write ``<name>.npz`` and add the head to ``heads.json`` (params already take raw features)."""
    heads_dir = Path(heads_dir)
    flat = {k: np.asarray(v, np.float32) for k, v in flatten_params(params).items()}
    np.savez(heads_dir / f"{name}.npz", **flat)
    index_path = heads_dir / INDEX
    index = json.loads(index_path.read_text()) if index_path.exists() else {"classes": list(classes), "heads": {}}
    if index["classes"] != list(classes):
        raise ValueError(f"{index_path}: classes differ from those of head {name!r}")
    index["heads"][name] = {"kind": kind, "file": f"{name}.npz", "config": dict(config)}
    index_path.write_text(json.dumps(index, indent=1))


def read_classes(heads_dir: Path) -> list[str]:
    """The class names every head in `heads_dir` predicts (``heads.json``'s, index = logit).

    Raises:
      FileNotFoundError: no heads.json in `heads_dir` (not a heads output folder).
    """
    return list(json.loads((Path(heads_dir) / INDEX).read_text())["classes"])


def available(heads_dir: Path) -> list[str]:
    """Names of the heads saved in `heads_dir`."""
    path = Path(heads_dir) / INDEX
    return list(json.loads(path.read_text())["heads"]) if path.exists() else []


def fused_backbones(heads_dir: Path, name: str | None = None) -> list[str]:
    """The backbones whose fused features head `name` (any head, for None) reads, in column
    order, when there are several; [] for a head on one backbone's features."""
    index = json.loads((Path(heads_dir) / INDEX).read_text())
    entries = [index["heads"].get(name, {})] if name is not None else index["heads"].values()
    names = list(dict.fromkeys(b["backbone"] for e in entries for b in e.get("config", {}).get("blocks", ())))
    return names if len(names) > 1 else []


def load_head(heads_dir: Path, name: str, backbone: str | None = None) -> TrainedHead:
    """Load a fitted head as a pure JAX function of (params, features).

    Args:
      heads_dir: the heads stage's output folder.
      name: ``logreg`` or ``mlp`` (see ``heads.json``).
      backbone: the one backbone whose features the caller will feed (the gradient stages);
        a head fitted on several backbones' fused features is then an error that says so.

    Returns:
      A `TrainedHead`; ``head.logits(head.params, features)`` gives (B, C) logits from raw
      (B, D) backbone features.

    Raises:
      FileNotFoundError: no heads.json in `heads_dir` (not a heads output folder).
      KeyError: no head called `name`; the message lists those available.
    """
    import jax
    import jax.numpy as jnp

    heads_dir = Path(heads_dir)
    index_path = heads_dir / INDEX
    if not index_path.exists():
        raise FileNotFoundError(f"{index_path} not found: {heads_dir} is not the output of the heads stage")
    index = json.loads(index_path.read_text())
    if name not in index["heads"]:
        raise KeyError(f"no head {name!r} in {heads_dir}; available: {', '.join(index['heads'])}")
    entry = index["heads"][name]
    blocks = entry["config"].get("blocks", ())
    if backbone is not None and len(blocks) > 1:
        from pipeline.errors import UserError

        raise UserError(f"head {name!r} in {heads_dir} was fitted on the fused features of "
                        f"{', '.join(b['backbone'] for b in blocks)}; a stage that runs one backbone "
                        f"({backbone}) cannot feed it. Use an imagenet target, or run with one "
                        f"backbone.name for this stage.")
    with np.load(heads_dir / entry["file"]) as f:
        params = jax.tree.map(jnp.asarray, unflatten_params({k: f[k] for k in f.files}))
    config = entry["config"]
    if entry["kind"] == "linear":
        from pipeline.heads.logreg import linear_logits

        def apply_fn(p, x):
            return linear_logits(p["W"], p["b"], x)
    elif entry["kind"] == "mlp":
        from pipeline.heads.mlp import make_module

        module = make_module(len(index["classes"]), tuple(config["hidden"]), config["activation"],
                             skip=config.get("skip", False))

        def apply_fn(p, x):
            return module.apply({"params": p}, x)
    else:
        raise ValueError(f"{index_path}: head {name!r} has unknown kind {entry['kind']!r}")
    if len(config.get("blocks", ())) > 1 and config.get("fuse") == "l2":
        apply_fn = _with_block_norm(apply_fn, [int(b["dim"]) for b in config["blocks"]])
    return TrainedHead(name, entry["kind"], list(index["classes"]), params, config, apply_fn)


def _with_block_norm(apply_fn: Callable, dims: Sequence[int]) -> Callable:
    """apply_fn on raw concatenated features, each backbone's block first scaled to unit L2 norm."""
    import jax.numpy as jnp

    bounds = np.cumsum([0, *dims])

    def fused(p, x):
        blocks = [x[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        normed = [v / jnp.maximum(jnp.linalg.norm(v, axis=1, keepdims=True), 1e-12) for v in blocks]
        return apply_fn(p, jnp.concatenate(normed, axis=1))

    return fused
