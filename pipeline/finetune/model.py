"""The fine-tuned classifier read back from the finetune stage's output, for the gradient stages.

It is the pretrained backbone with its top layers replaced by the trained ones, followed by a
linear head on the pooled features. Because ``top(trunk(x)) == embed(x)`` (`pipeline.models.cut`),
running ``backbone.embed`` with the merged params IS the fine-tuned network on pixels, differentiable
end to end, with no cut needed at attack time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.finetune.artifact import FINETUNED, read_finetuned

NAME = "finetune"  # the head's name in targets (``finetune:cat``) and in ``adversarial.head``


def available(finetune_dir: Path | None) -> bool:
    """Whether `finetune_dir` holds a trained classifier (the stage ran with ``enabled: true``)."""
    return finetune_dir is not None and (Path(finetune_dir) / FINETUNED).exists()


def classes(finetune_dir: Path) -> list[str]:
    return list(read_finetuned(finetune_dir).classes)


def load_finetuned(finetune_dir: Path, backbone: Any) -> tuple[Any, Any]:
    """(backbone params with the trained top merged in, `TrainedHead` named ``finetune``).

    Args:
      finetune_dir: the finetune stage's output folder.
      backbone: the same pretrained `registry.Backbone` the stage fine-tuned.

    Raises:
      ValueError: the folder was trained on another backbone.
    """
    import jax.numpy as jnp

    from pipeline.heads.logreg import linear_logits
    from pipeline.heads.trained import TrainedHead
    from pipeline.models.convert import unflatten_params

    meta = read_finetuned(finetune_dir)
    if meta.backbone != backbone.spec.name:
        raise ValueError(f"{finetune_dir}: fine-tuned {meta.backbone}, not {backbone.spec.name}")
    with np.load(Path(finetune_dir) / "finetune.npz") as f:
        trained = unflatten_params({k: f[k] for k in f.files})
    top = {k: {n: jnp.asarray(v) for n, v in layer.items()} if isinstance(layer, dict) else jnp.asarray(layer)
           for k, layer in trained["top"]["features"].items()}
    merged = {**backbone.params, "features": {**backbone.params["features"], **top}}
    head = {"W": jnp.asarray(trained["head"]["W"]), "b": jnp.asarray(trained["head"]["b"])}
    return merged, TrainedHead(NAME, "linear", list(meta.classes), head, {"cut": meta.cut},
                               lambda p, x: linear_logits(p["W"], p["b"], x))
