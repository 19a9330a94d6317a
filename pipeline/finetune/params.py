"""The ``finetune`` params section: where the backbone is cut and what the trunk stage caches.

Read by the trunk stage (its key) and by the finetune stage (only ``enabled``, see
`stages.finetune.downstream_key`); the optimiser's settings are the finetune stage's own
``finetune_train`` section.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pipeline.params import ParamsError, spec


@dataclasses.dataclass(frozen=True)
class FinetuneParams:
    """params.yaml section ``finetune``: where to cut and what to cache (the trunk stage's key)."""

    enabled: bool = spec(False, help="run the trunk pass and fine-tuning (off: both stages write a stub)")
    unfreeze: str = spec("block15", help="first trainable layer; it and all after it are fine-tuned "
                                          "(lite0: stem, block0..block15, head_conv; a typo lists them all)")
    views: int = spec(4, min=0, max=64, help="augmented views per training image, besides its centre view")
    flip: bool = spec(True, help="augmented views are mirrored with probability 1/2")
    crop: bool = spec(True, help="augmented views are random resized crops of the original photo")
    min_scale: float = spec(0.35, min=0.05, max=1.0, help="smallest random crop, as a fraction of the photo's area")
    color_jitter: float = spec(0.0, min=0.0, max=0.9, help="brightness/contrast/saturation factors in [1-s, 1+s]")
    seed: int = spec(0, min=0, help="seed of the augmented views")
    dtype: Literal["float16", "float32"] = spec("float16", help="storage dtype of the cached activations")
    batch_size: int = spec(32, min=1, help="views per trunk call")
    shard_size: int = spec(256, min=1, help="images per checkpointed shard; a multiple of batch_size")
    workers: int = spec(0, min=0, affects_output=False, help="decoding threads; 0 = one per CPU core")

    def validate(self) -> None:
        if not self.unfreeze.strip():
            raise ParamsError("unfreeze: must name a layer of the backbone, e.g. block15 or head_conv.")
        if self.shard_size % self.batch_size:
            raise ParamsError(f"shard_size: {self.shard_size} is not a multiple of batch_size {self.batch_size}; "
                              "shards must hold whole batches so that a resumed run computes the same batches.")


def rows_per_image(fp: FinetuneParams, split: str) -> int:
    return 1 + fp.views if split == "train" else 1
