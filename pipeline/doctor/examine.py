"""The doctor's whole examination: features and images in, one findings dict out.

`examine` runs, in order: the neighbour search (`neighbors.top_k`), content hashes and thumbnails
(`pixels`), duplicate groups and leaks (`duplicates`), out-of-fold label checks (`labels`), kNN
outliers (`outliers`), and the drop list (`drops.plan`). It returns what ``doctor.json`` holds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.doctor import drops, duplicates, labels as label_checks, neighbors, outliers, pixels

SPLITS = ("train", "val", "test")


def load(features_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[str], list[str]]:
    """All splits' features stacked: (x (N, D) float32, labels (N,), ids, split per row, classes).

    Features stored one row per view (``features.reduce: rows``) are averaged back to one row
    per image, so the doctor judges images.
    """
    from pipeline.features.artifact import load_split, read_classes, split_assembled

    classes = read_classes(features_dir)
    xs, ys, ids, split_of = [], [], [], []
    for s in SPLITS:
        if not split_assembled(features_dir, s):
            continue
        x, y, i = load_split(features_dir, s)
        x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
        base = [drops._VIEW.sub("", v) for v in i]
        if base != list(i):                        # rows per view: average them per image
            first: dict[str, int] = {}
            for j, b in enumerate(base):
                first.setdefault(b, j)
            pos = {b: n for n, b in enumerate(first)}
            inv = np.array([pos[b] for b in base], np.int64)
            sums = np.zeros((len(first), x.shape[1]), np.float64)
            np.add.at(sums, inv, x)
            x = (sums / np.bincount(inv)[:, None]).astype(np.float32)
            y = y[list(first.values())]
            i = list(first)
        xs.append(x)
        ys.append(y)
        ids += list(i)
        split_of += [s] * len(y)
    d = xs[0].shape[1] if xs else 0
    return (np.concatenate(xs) if xs else np.zeros((0, d), np.float32),
            np.concatenate(ys) if ys else np.zeros(0, np.int64), ids, split_of, classes)


def examine(features_dir: Path, data_dir: Path | None, p: Any, log: Callable[[str], None] = lambda m: None
            ) -> dict[str, Any]:
    """Find duplicates, leaks, likely label errors and outliers; decide the drops.

    Args:
      features_dir: the features stage's output.
      data_dir: the data stage's output (to read the images back), or None: no content hashes
        and no pixel check.
      p: the ``doctor`` params section (`stages.doctor.DoctorParams`).
      log: progress lines.

    Returns:
      The fields of `pipeline.doctor.artifact.Findings` (doctor.json; docs/doctor.md).
    """
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    x, y, ids, split_of, classes = load(Path(features_dir))
    n, K = len(y), len(classes)
    rows_of = {s: [r for r in range(n) if split_of[r] == s] for s in SPLITS}
    local = {r: (split_of[r], r - rows_of[split_of[r]][0]) for r in range(n)}  # -> (split, row in split)
    t["load"] = time.perf_counter() - t0

    # ---- neighbours ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    z = neighbors.normalize(x, x.mean(0) if p.center and n else None)
    k = max(p.neighbors, p.outliers.k) if n > 1 else 1
    sims, idx = neighbors.top_k(z, k, block=p.block, dtype=p.search_dtype) if n > 1 else \
        (np.full((n, 1), -np.inf, np.float32), np.full((n, 1), -1, np.int64))
    cands = duplicates.candidate_pairs(sims, idx, p.threshold)
    t["neighbors"] = time.perf_counter() - t0

    # ---- pixels: hashes and thumbnails ---------------------------------------------------------
    t0 = time.perf_counter()
    digests, thumbs, problems = {}, {}, []
    if data_dir is not None and (p.exact or (p.pixel_check and cands)):
        from pipeline.sources import load_data

        data = load_data(data_dir)
        wanted: dict[str, set[int]] = {}
        if p.pixel_check:
            for a, b, _ in cands:
                for r in (a, b):
                    wanted.setdefault(local[r][0], set()).add(local[r][1])
        digests, thumbs, problems = pixels.read_all(data, wanted, p.pixel_size, p.exact)
    back = {v: r for r, v in local.items()}
    exact_groups = [[back[m] for m in g if m in back] for g in pixels.exact_groups(digests)]
    exact_pairs = {(g[0], m) for g in exact_groups for m in g[1:]}
    pairs = []
    for a, b, cos in cands:
        corr = pixels.confirm([(local[a], local[b])], thumbs, p.pixel_size)[0] if p.pixel_check else None
        same_bytes = bool(digests) and digests.get(local[a]) == digests.get(local[b])
        ok = same_bytes or (corr is not None and corr >= p.pixel_threshold) or not p.pixel_check
        pairs.append(duplicates.Pair(a, b, round(cos, 5), corr, same_bytes, ok))
    seen = {(q.a, q.b) for q in pairs}
    for a, b in sorted(exact_pairs - seen):   # identical bytes the feature search did not list
        pairs.append(duplicates.Pair(a, b, round(float(z[a] @ z[b]), 5), 1.0, True, True))
    t["pixels"] = time.perf_counter() - t0

    # ---- groups and leaks ----------------------------------------------------------------------
    confirmed = [(q.a, q.b) for q in pairs if q.confirmed]
    groups = duplicates.groups(n, confirmed)
    group_of = np.full(n, -1)
    for g_i, g in enumerate(groups):
        group_of[g] = g_i
    by_group: dict[int, list[duplicates.Pair]] = {}
    for q in pairs:
        if q.confirmed:
            by_group.setdefault(int(group_of[q.a]), []).append(q)
    leaked_rows, redundant_rows, group_rows = {}, {}, []

    def img(r: int) -> dict[str, Any]:
        return {"split": split_of[r], "id": ids[r], "label": classes[y[r]]}

    for g_i, g in enumerate(groups):
        qs = by_group.get(g_i, [])
        leak = duplicates.leaked(g, split_of)
        keep = duplicates.keeper(g, split_of)
        for r in leak:
            leaked_rows[r] = f"copy of {split_of[keep]}/{ids[keep]}"
        for r in duplicates.redundant(g, split_of):
            redundant_rows.setdefault(r, f"copy of {split_of[keep]}/{ids[keep]}")
        group_rows.append({
            "members": [img(r) for r in g], "keep": img(keep), "leaked": [img(r) for r in leak],
            "cross_split": len({split_of[r] for r in g}) > 1,
            "labels_differ": len({int(y[r]) for r in g}) > 1,
            "exact": all(q.exact for q in qs) if qs else False,
            "identical": sorted({ids[r] for q in qs if q.exact for r in (q.a, q.b)}),
            "min_cosine": min((q.cosine for q in qs), default=None),
            "min_pixel": min((q.pixel for q in qs if q.pixel is not None), default=None)})
    group_rows.sort(key=lambda g: (not g["cross_split"], -len(g["members"])))
    unconfirmed = [{"a": img(q.a), "b": img(q.b), "cosine": q.cosine, "pixel": q.pixel}
                   for q in pairs if not q.confirmed]

    # ---- labels ---------------------------------------------------------------------------------
    t0 = time.perf_counter()
    label_rows, label_list, issues_n = {}, [], 0
    lp = p.labels
    counts = np.bincount(y, minlength=K) if n else np.zeros(K, int)
    if lp.enabled and n and (counts > 0).sum() >= 2:
        folds = int(min(lp.folds, max(2, counts[counts > 0].max())))
        probs = label_checks.out_of_fold(x, y, K, folds, lp.C, lp.seed, lp.steps, lp.max_dim)
        issue = label_checks.find_label_issues(y, probs)
        quality = label_checks.self_confidence(y, probs)
        issues_n = int(issue.sum())
        # Every flagged image, and the `ranked` least confident beyond them, least confident first.
        order = np.argsort(quality, kind="stable")
        listed = set(np.flatnonzero(issue).tolist()) | set(order[:lp.ranked].tolist())
        for r in (int(r) for r in order if r in listed):
            sugg = int(np.argmax(probs[r]))
            entry = {**img(r), "suggested": classes[sugg], "p_given": round(float(quality[r]), 4),
                     "p_suggested": round(float(probs[r, sugg]), 4), "issue": bool(issue[r])}
            label_list.append(entry)
            if issue[r]:
                label_rows[r] = f"likely label error: looks like {classes[sugg]}"
    t["labels"] = time.perf_counter() - t0

    # ---- outliers -------------------------------------------------------------------------------
    op = p.outliers
    if p.center:   # the outlier score uses the raw features (see `outliers`)
        sims, idx = neighbors.top_k(neighbors.normalize(x), k, block=p.block, dtype=p.search_dtype) \
            if n > 1 else (sims, idx)
    score = outliers.knn_distance(sims, idx, op.k, group_of) if n > 1 else np.zeros(n)
    zs = outliers.robust_z(score) if n > 2 else np.zeros(n)
    flagged = [int(r) for r in np.argsort(-score, kind="stable") if zs[r] >= op.z and score[r] >= op.distance]
    outlier_rows = {r: f"outlier: kNN distance {score[r]:.3f} (z {zs[r]:.1f})" for r in flagged}
    outlier_list = [{**img(r), "score": round(float(score[r]), 4), "z": round(float(zs[r]), 2),
                     "nearest": ids[int(idx[r, 0])] if idx[r, 0] >= 0 else None} for r in flagged]

    plan = drops.plan(p.action, split_of, ids, leaked_rows, redundant_rows, label_rows, outlier_rows)
    would = {a: sum(len(v) for v in drops.plan(a, split_of, ids, leaked_rows, redundant_rows,
                                                   label_rows, outlier_rows)["ids"].values())
             for a in ("drop_leaks", "drop_all")}
    return {
        "classes": classes, "images": {s: len(rows_of[s]) for s in SPLITS if rows_of[s]},
        "params": {"threshold": p.threshold, "pixel_threshold": p.pixel_threshold,
                   "center": p.center, "action": p.action},
        "counts": {"leak_groups": sum(g["cross_split"] for g in group_rows),
                   "leaked_images": len(leaked_rows),
                   "duplicate_groups": sum(not g["cross_split"] for g in group_rows),
                   "exact_groups": len(exact_groups), "unconfirmed_pairs": len(unconfirmed),
                   "label_issues": issues_n, "outliers": len(flagged),
                   "dropped": sum(len(v) for v in plan["ids"].values()), "would_drop": would},
        "groups": group_rows, "unconfirmed": unconfirmed, "label_issues": label_list,
        "outliers": outlier_list, "drops": plan, "unreadable": problems,
        "seconds": {k: round(v, 3) for k, v in t.items()},
    }
