"""Near-duplicate and exact-duplicate groups, and which copies leak across splits.

Rows are numbered over the concatenation of the splits (train, then val, then test). A pair is a
*candidate* when its cosine similarity reaches the threshold; a candidate is *confirmed* when its
thumbnails agree (`pixels.correlation` >= the pixel threshold) or its bytes are identical.
Confirmed pairs are joined into groups (union-find, so a chain of copies is one group). A group
that spans splits is a *leak*: its train copy (or, with no train copy, its val copy) is kept,
the others are the copies that inflate the held-out figures.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

SPLIT_RANK = {"train": 0, "val": 1, "test": 2}


@dataclasses.dataclass(frozen=True)
class Pair:
    a: int
    b: int
    cosine: float
    pixel: float | None   # thumbnail correlation; None: not checked or image unreadable
    exact: bool           # identical bytes
    confirmed: bool


def candidate_pairs(sims: np.ndarray, idx: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Unique (a < b, cosine) pairs of the top-k lists at or above `threshold`, most similar first."""
    rows, cols = np.nonzero((sims >= threshold) & (idx >= 0))
    seen: dict[tuple[int, int], float] = {}
    for r, c in zip(rows, cols):
        a, b = sorted((int(r), int(idx[r, c])))
        seen[(a, b)] = max(seen.get((a, b), -1.0), float(sims[r, c]))
    return sorted(((a, b, s) for (a, b), s in seen.items()), key=lambda t: (-t[2], t[0], t[1]))


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def groups(n: int, edges: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Connected components of two or more rows (union-find), each sorted, by first row."""
    parent = list(range(n))
    for a, b in edges:
        ra, rb = _find(parent, a), _find(parent, b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    comps: dict[int, list[int]] = {}
    for i in {v for e in edges for v in e}:
        comps.setdefault(_find(parent, i), []).append(i)
    return sorted((sorted(c) for c in comps.values() if len(c) > 1), key=lambda c: c[0])


def keeper(members: Sequence[int], split_of: Sequence[str]) -> int:
    """The copy a group keeps: the first one in the earliest split (train before val before test)."""
    return min(members, key=lambda r: (SPLIT_RANK.get(split_of[r], 3), r))


def leaked(members: Sequence[int], split_of: Sequence[str]) -> list[int]:
    """Copies of a group in a later split than its keeper (the held-out copies that leak)."""
    keep = keeper(members, split_of)
    first = SPLIT_RANK.get(split_of[keep], 3)
    return [r for r in members if SPLIT_RANK.get(split_of[r], 3) > first]


def redundant(members: Sequence[int], split_of: Sequence[str]) -> list[int]:
    """Every copy but the keeper (what ``drop_all`` removes from a group)."""
    keep = keeper(members, split_of)
    return [r for r in members if r != keep]
