"""The ``features`` params section and the test-time views it asks for.

It lives with its topic (not in `stages.features`) because predict reads it back from a run's
manifest to take the same views of a new photo as the features stage took.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pipeline.params import ParamsError, spec

CROPS = ("center", "top_left", "top_right", "bottom_left", "bottom_right")


@dataclasses.dataclass(frozen=True)
class FeaturesParams:
    """params.yaml section ``features``."""

    image_size: int | None = spec(
        None, min=32, max=1024,
        help="side of the square crop fed to the backbone; null: its native size (Lite0 224, Lite2 "
             "260). Larger sees the photo at a higher resolution (the resize keeps the native crop "
             "fraction); predict and export use the same. Several backbones: each runs at this size")
    batch_size: int = spec(32, min=1, help="images per backbone call")
    dtype: Literal["float32", "float16"] = spec("float32", help="storage dtype of the features")
    shard_size: int = spec(1024, min=1, help="images per checkpointed shard; a multiple of batch_size")
    workers: int = spec(0, min=0, affects_output=False, help="decoding threads; 0 = one per CPU core")
    augment: Literal["none", "flip", "crops", "flip_crops"] = spec(
        "none", help="test-time augmentation views: none, flip (the mirror image too), crops (n_crops crops) or flip_crops (both)")
    n_crops: int = spec(5, min=1, max=5, help="crops with augment crops/flip_crops: centre, then corners")
    reduce: Literal["mean", "rows"] = spec("mean", help="average the views, or store each as a row")

    def validate(self) -> None:
        if self.shard_size % self.batch_size:
            raise ParamsError(f"shard_size: {self.shard_size} is not a multiple of batch_size "
                              f"{self.batch_size}; shards must hold whole batches so that a resumed "
                              "run computes exactly the same batches.")


def view_plan(fp: FeaturesParams) -> tuple[tuple[str, ...], bool]:
    """(crop positions, flip) of the views taken of each image."""
    crops = CROPS[:fp.n_crops] if fp.augment in ("crops", "flip_crops") else ("center",)
    return crops, fp.augment in ("flip", "flip_crops")


def input_spec(backbone_spec: Any, fp: FeaturesParams) -> Any:
    """The backbone's spec at the input size the features use (``features.image_size``).

    Raises:
      ParamsError: the backbone cannot read another input size (VGG's dense fc1).
    """
    try:
        return backbone_spec.at_size(fp.image_size)
    except ValueError as e:
        raise ParamsError(f"features.image_size: {e}; set it to null (native) for this backbone.") from None
