"""The inspect stage's params: ``inspect`` (frozen, validated)."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal, Union

from pipeline.params import ParamsError, spec


@dataclasses.dataclass(frozen=True)
class InspectParams:
    """params.yaml section ``inspect``."""

    photos: Union[int, str, tuple[str, ...]] = spec(
        4, help="photos for the feature maps: a count (that many test photos, one class after another), "
                "'one_per_class' (first test photo of every class), or a list of image ids")
    layers: tuple[str, ...] = spec((), help="layers whose output maps are shown (names from the backbone's layer "
                                             "list; empty: an early, a middle and the last)")
    channels: int = spec(16, min=1, max=64, help="most active channels shown per layer and photo")
    gradcam_layer: str = spec("auto", help="layer whose output Grad-CAM weighs ('auto': the last map, the "
                                           "usual choice)")
    head: str = spec("auto", help="trained head explained by Grad-CAM and the map: logreg, mlp, or 'auto' "
                                  "(the best by CV or val accuracy, as the report picks)")
    max_mistakes: int = spec(8, min=0, max=200, help="most confident test mistakes explained by Grad-CAM")
    max_correct: int = spec(12, min=0, max=200, help="correct test examples explained (one per class, at most this)")
    map_method: Literal["opentsne", "tsne", "umap"] = spec(
        "opentsne", help="2-D map: opentsne (FFT t-SNE), tsne (scikit-learn) or umap (umap-learn)")
    map_splits: tuple[str, ...] = spec(("test", "train"), min_len=1, help="splits of cached features on the map")
    map_max_points: int = spec(20000, min=10, help="at most this many points (a seeded sample beyond it)")
    seed: int = spec(0, help="seed of the map layout and the point sample")
    batch_size: int = spec(8, min=1, max=256, help="photos per Grad-CAM / feature-map call",
                           affects_output=False)

    def validate(self) -> None:
        if isinstance(self.photos, int) and self.photos < 1:
            raise ParamsError(f"photos: {self.photos} must be at least 1 (or 'one_per_class', or a list of ids).")
        if isinstance(self.photos, str) and self.photos != "one_per_class":
            raise ParamsError(f"photos: {self.photos!r} is not allowed; give a count, 'one_per_class' or a list "
                              "of image ids.")
        if isinstance(self.photos, tuple) and not self.photos:
            raise ParamsError("photos: the list of ids is empty; give at least one id or a count.")
        if not re.fullmatch(r"[A-Za-z0-9_]+", self.head):
            raise ParamsError(f"head: {self.head!r} is not a head name; use auto, logreg or mlp.")
        for i, s in enumerate(self.map_splits):
            if s not in ("train", "val", "test"):
                raise ParamsError(f"map_splits[{i}]: {s!r} is not a split; use train, val or test.")
