"""The report's "Data doctor" section: leakage first, then duplicates, label errors, outliers.

Reads ``doctor.json`` only (no jax): thumbnails are re-read from the photos on disk through the
report's `ImageFinder`, as the mistakes gallery does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from pipeline.doctor import artifact, summary
from pipeline.doctor.duplicates import SPLIT_RANK
from pipeline.report import readers
from pipeline.report.common import Options, thumbnail
from pipeline.report.document import Card, Details, Gallery, Section, Table, Text, Tiles

ID, TITLE = "doctor", "Data doctor"


def _thumb(finder: readers.ImageFinder, rec: Mapping[str, Any], size: int, name: str):
    src = finder.find(rec["id"])
    return thumbnail(src, size, name) if src else None


def _shown(n: int, cap: int) -> str:
    return f" The first {cap} are shown; doctor.json lists all." if n > cap else ""


def _group_card(g: Mapping[str, Any], finder, size: int, i: int, kind: str) -> Card:
    members = [g["keep"], *[m for m in g["members"] if m != g["keep"]]][:3]
    images = []
    for j, m in enumerate(members):
        t = _thumb(finder, m, size, f"doctor_{kind}_{i:03d}_{j}")
        if t:
            images.append((t, f"{m['split']}: {m['label']}"))
    lines = []
    if g.get("min_cosine") is not None:
        lines.append(f"cosine >= {g['min_cosine']:.3f}" + (f", pixels {g['min_pixel']:.2f}" if g.get("min_pixel") is not None else ""))
    if g["exact"]:
        lines.append("identical files")
    elif g.get("identical"):
        lines.append(f"{len(g['identical'])} of them identical files")
    if g["labels_differ"]:
        lines.append("labels differ: " + ", ".join(sorted({m["label"] for m in g["members"]})))
    splits = sorted({m["split"] for m in g["members"]}, key=lambda s: SPLIT_RANK.get(s, 3))
    title = " + ".join(splits) + f": {len(g['members'])} copies"
    return Card(images, title=title, lines=lines, kind="bad" if kind == "leak" else "",
                foot=" = ".join(m["id"] for m in members))


def _photo_gallery(finder: readers.ImageFinder, rows: list[dict], size: int, name: str, kind: str,
                   title: Callable[[dict], str], lines: Callable[[dict], list[str]]) -> Gallery:
    """One card per flagged photo (its thumbnail, a title, a few lines, its split/id)."""
    cards = []
    for i, r in enumerate(rows):
        t = _thumb(finder, r, size, f"doctor_{name}_{i:03d}")
        cards.append(Card([(t, "")] if t else [], title=title(r), lines=lines(r), kind=kind, foot=summary.img_name(r)))
    return Gallery(cards, min_width=max(150, size))


def section(doctor_dir: Path, finder: readers.ImageFinder, opts: Options) -> Section | None:
    """The doctor's section, or None when its output has no doctor.json."""
    found = artifact.read(doctor_dir)
    if found is None:
        return None
    c, size, cap = found.counts, opts.thumbnail_size, max(opts.max_mistakes, 1)
    blocks: list = [Tiles([
        ("leaked copies", str(c["leaked_images"]), f"{c['leak_groups']} group(s) across splits"),
        ("duplicate groups", str(c["duplicate_groups"]), "within a split"),
        ("likely label errors", str(c["label_issues"]), "confident learning, out-of-fold"),
        ("outliers", str(c["outliers"]), "kNN distance"),
        ("dropped", str(c["dropped"]), f"doctor.action: {found.params['action']}")])]
    blocks.append(Details("The stage's summary", [Table(["doctor"], [[line] for line in summary.lines(found, top=5)])]))
    leaks = [g for g in found.groups if g["cross_split"]]
    blocks.append(Text(f"Leakage across splits: {len(leaks)} group(s) of copies in more than one split "
                       f"(near-duplicate features, confirmed on thumbnails). A held-out copy of a training "
                       f"image inflates every figure measured on it." + _shown(len(leaks), cap) if leaks else
                       "Leakage across splits: none found."))
    if leaks:
        blocks.append(Gallery([_group_card(g, finder, size, i, "leak") for i, g in enumerate(leaks[:cap])],
                              min_width=max(150, size)))
    dups = [g for g in found.groups if not g["cross_split"]]
    if dups:
        blocks.append(Text(f"Duplicates within a split: {len(dups)} group(s)." + _shown(len(dups), cap)))
        blocks.append(Gallery([_group_card(g, finder, size, i, "dup") for i, g in enumerate(dups[:cap])],
                              min_width=max(150, size)))
    issues = [r for r in found.label_issues if r["issue"]]
    blocks.append(Text(f"Likely label errors: {len(issues)}, least confident first (out-of-fold logreg "
                       f"probability of the given label)." + _shown(len(issues), cap) if issues else "Likely label errors: none flagged."))
    if issues:
        blocks.append(_photo_gallery(finder, issues[:cap], size, "label", "bad", lambda r: f"labelled {r['label']}",
                                     lambda r: [f"looks like {r['suggested']} ({100 * r['p_suggested']:.0f}%)",
                                                f"p(given) = {100 * r['p_given']:.0f}%"]))
    outl = found.outliers
    blocks.append(Text(f"Outliers: {len(outl)} image(s) far from every other (kNN distance, robust z >= "
                       f"the threshold): off-domain photos, or rare views." + _shown(len(outl), cap) if outl else "Outliers: none flagged."))
    if outl:
        blocks.append(_photo_gallery(finder, outl[:cap], size, "outlier", "", lambda r: f"{r['label']}",
                                     lambda r: [f"kNN distance {r['score']:.3f}", f"z = {r['z']:.1f}"]))
    if found.unconfirmed:
        rows = [[summary.img_name(u["a"]), summary.img_name(u["b"]), f"{u['cosine']:.3f}",
                 "–" if u["pixel"] is None else f"{u['pixel']:.2f}"] for u in found.unconfirmed[:200]]
        blocks.append(Details(f"Similar features, different pixels ({len(found.unconfirmed)} pairs, not counted)",
                              [Table(["image", "image", "cosine", "pixels"], rows)]))
    dropped = [[s, i, found.drops["reasons"][s][i]] for s, ids in found.drops["ids"].items() for i in ids]
    if dropped:
        blocks.append(Details(f"Dropped before the heads ({len(dropped)})", [Table(["split", "id", "why"], dropped)]))
    return Section(ID, TITLE, blocks)
