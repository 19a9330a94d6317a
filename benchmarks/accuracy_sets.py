"""The tuning sets of the accuracy benchmarks and their features, computed by the pipeline itself.

Every set in ``../shared/data`` that is tuning data (never a reported held-out result):

- ``pets``: pets-tune + pets-dev as one folder (491 photos, 37 breeds; uneven: 1-23 per breed);
- ``cats-dogs``: cats-dogs-dev (120 photos, 2 classes);
- ``food``: food101-subset-10 (500 photos, 10 dishes);
- ``textures``: dtd-textures-10 (500 photos, 10 textures);
- ``cells``: pbc-blood-cells-8 (400 microscopy photos, 8 blood-cell types).

Features come from the pipeline's own data and features stages (`features`), run once per
(set, backbone, image size, augmentation) into a cache folder and reused on later runs. Splits
are the benchmark's own (`split_halves`): every class halved at random per seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

#: name -> folders of ../shared/data whose class folders make up the set.
SETS: dict[str, tuple[str, ...]] = {
    "pets": ("pets-tune", "pets-dev"),
    "cats-dogs": ("cats-dogs-dev",),
    "food": ("food101-subset-10",),
    "textures": ("dtd-textures-10",),
    "cells": ("pbc-blood-cells-8",),
}


def photo_folder(cache_dir: Path, name: str) -> Path:
    """The set as one folder of class sub-folders (symlinks to ../shared/data), made once.

    Raises:
      FileNotFoundError: ../shared/data is not there (a clone outside the workplace).
    """
    sources = [DATA / s for s in SETS[name]]
    missing = [s for s in sources if not s.is_dir()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} is missing: the accuracy benchmarks read the tuning photos "
                                "in ../shared/data beside the repository.")
    if len(sources) == 1:
        return sources[0].resolve()
    folder = cache_dir / "photos" / name
    if not folder.exists():
        tmp = folder.with_suffix(".tmp")
        for src in sources:
            for cls in sorted(p for p in src.iterdir() if p.is_dir()):
                (tmp / cls.name).mkdir(parents=True, exist_ok=True)
                for f in sorted(cls.iterdir()):
                    (tmp / cls.name / f"{src.name}_{f.name}").symlink_to(f.resolve())
        tmp.rename(folder)
    return folder.resolve()  # the data key hashes the path


def features(cache_dir: Path, photos: Path, backbone: str, augment: str = "none",
             image_size: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """(rows (N x views, D), labels per image, image ids, views) from the pipeline's features stage.

    Views are stored as rows (``reduce: rows``), every split concatenated: the benchmarks carve
    their own splits. Runs the data and features stages only where the cache lacks them.
    """
    from pipeline import planner, runner
    from pipeline.graph import load_graph
    from pipeline.progress import QuietReporter
    from pipeline.features.artifact import load_split, read_info

    graph = load_graph()
    overrides = ["data.source=folder", f"data.path={photos}", f"backbone.name={backbone}",
                 f"features.augment={augment}", "features.reduce=rows", "features.workers=2",
                 f"features.image_size={'null' if image_size is None else image_size}"]
    params = planner.resolve_params(graph, [], overrides)
    plan = planner.plan(graph, params, cache_dir)["features"]
    if not plan.up_to_date:
        print(f"  computing features: {photos.name} {backbone} augment={augment} size={image_size} ...", flush=True)
        runner.execute(graph, params, cache_dir, ["features"], QuietReporter())
    info = read_info(plan.out)
    xs, ys, ids = [], [], []
    for split in ("train", "val", "test"):
        x, y, i = load_split(plan.out, split)
        xs.append(np.asarray(x, np.float32))
        ys.append(np.asarray(y))
        ids += i
    views = info.views
    y = np.concatenate(ys)[::views]
    return np.concatenate(xs), y, [i.split("#")[0] for i in ids[::views]], views


def split_halves(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, test) image indices: each class halved at random (a class of one goes to fit)."""
    rng = np.random.default_rng(seed)
    fit, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = len(idx) // 2
        test += list(idx[:k])
        fit += list(idx[k:])
    return np.sort(fit), np.sort(test)


def carve_val(y: np.ndarray, seed: int, fraction: float = 0.1) -> np.ndarray:
    """Boolean mask of val rows within the fitting half (stratified, as the data stage carves)."""
    rng = np.random.default_rng(seed + 1000)
    val = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        val[idx[:int(round(fraction * len(idx)))]] = True
    return val
