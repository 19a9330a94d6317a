"""Seeded, stratified splits: carve val / test out of a pool, cap images per class."""

from __future__ import annotations

import json
import math
import zlib
from typing import Any, Mapping, Sequence

def _seeded_order(items: Sequence[Any], *key: Any) -> list[int]:
    """A permutation of range(len(items)) that depends only on the key (seed, split, class)."""
    import random

    rng = random.Random(zlib.crc32(json.dumps(key, default=str).encode()))
    order = list(range(len(items)))
    rng.shuffle(order)
    return order


def carve(by_class: Mapping[str, list[Any]], n_target: int, seed: int, name: str
          ) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """Take about `n_target` items out of a pool, stratified by class.

    Each class gives its share of `n_target` (largest remainders, ties broken by a seeded draw)
    and always keeps at least one item in the pool when it has two or more. Which items a class
    gives depends only on (seed, name, class), so adding a photo to one class does not reshuffle
    the others.

    Args:
      by_class: class -> items, each list in a canonical (sorted) order.
      n_target: how many items to take in total.
      seed: the split seed.
      name: the split being carved (``val``, ``test``), part of the seed.

    Returns:
      (taken, kept): class -> items, each in the input order.
    """
    total = sum(len(v) for v in by_class.values())
    classes = sorted(by_class)
    if total == 0 or n_target <= 0:
        return {c: [] for c in classes}, {c: list(by_class[c]) for c in classes}
    cap = {c: max(0, len(by_class[c]) - 1) for c in classes}
    quota = {c: n_target * len(by_class[c]) / total for c in classes}
    count = {c: min(cap[c], math.floor(quota[c])) for c in classes}
    tie = _seeded_order(classes, seed, name, "ties")
    rank = sorted(range(len(classes)), key=lambda i: (-(quota[classes[i]] - math.floor(quota[classes[i]])), tie[i]))
    left = n_target - sum(count.values())
    for i in rank * 2:  # a second pass hands out what capped classes could not take
        if left <= 0:
            break
        c = classes[i]
        if count[c] < cap[c]:
            count[c] += 1
            left -= 1
    taken, kept = {}, {}
    for c in classes:
        items = by_class[c]
        chosen = set(_seeded_order(items, seed, name, c)[: count[c]])
        taken[c] = [x for i, x in enumerate(items) if i in chosen]
        kept[c] = [x for i, x in enumerate(items) if i not in chosen]
    return taken, kept


def limit_per_class(by_class: Mapping[str, list[Any]], k: int | None, seed: int, split: str
                    ) -> dict[str, list[Any]]:
    """Keep at most `k` items per class (a seeded subsample, input order kept); None keeps all."""
    if k is None:
        return {c: list(v) for c, v in by_class.items()}
    out = {}
    for c, items in by_class.items():
        chosen = set(_seeded_order(items, seed, "limit", split, c)[:k])
        out[c] = [x for i, x in enumerate(items) if i in chosen]
    return out
