"""The doctor's one-screen summary (printed at the end of the stage, and by the report)."""

from __future__ import annotations

from typing import Any, Mapping

from pipeline.doctor.artifact import Findings


def img_name(d: Mapping[str, Any]) -> str:
    """``split/id``, or the id alone when it already starts with its split (train/val/test folders)."""
    return d["id"] if str(d["id"]).startswith(f"{d['split']}/") else f"{d['split']}/{d['id']}"


def lines(found: Findings, top: int = 3) -> list[str]:
    """A few lines per finding, leakage first; the drops last."""
    c = found.counts
    sizes = found.images
    total = sum(sizes.values())
    out = [f"doctor: {total} images ({' / '.join(f'{s} {n}' for s, n in sizes.items())}), "
           f"threshold cosine {found.params['threshold']}, pixels {found.params['pixel_threshold']}"]
    leaks = [g for g in found.groups if g["cross_split"]]
    out.append(f"  leakage across splits : {c['leak_groups']} group(s), {c['leaked_images']} held-out "
               f"cop{'y' if c['leaked_images'] == 1 else 'ies'} of images in an earlier split")
    for g in leaks[:top]:
        out.append(f"      {img_name(g['keep'])} = " + ", ".join(img_name(m) for m in g["leaked"])
                   + (" (exact)" if g["exact"] else "") + (" (labels differ)" if g["labels_differ"] else ""))
    dups = [g for g in found.groups if not g["cross_split"]]
    out.append(f"  duplicates in a split : {c['duplicate_groups']} group(s) "
               f"({sum(len(g['members']) for g in dups)} images); {c['exact_groups']} group(s) of identical files")
    for g in dups[:top]:
        out.append("      " + " = ".join(img_name(m) for m in g["members"][:4]) + (" ..." if len(g["members"]) > 4 else ""))
    if c["unconfirmed_pairs"]:
        out.append(f"  similar, pixels differ: {c['unconfirmed_pairs']} pair(s) to review (not duplicates by the thumbnail check)")
    flagged = [r for r in found.label_issues if r["issue"]]
    out.append(f"  likely label errors   : {c['label_issues']} ({100 * c['label_issues'] / max(total, 1):.1f}%)")
    for r in flagged[:top]:
        out.append(f"      {img_name(r)}: labelled {r['label']} (p {r['p_given']:.2f}), looks like "
                   f"{r['suggested']} (p {r['p_suggested']:.2f})")
    out.append(f"  outliers              : {c['outliers']}")
    for r in found.outliers[:top]:
        out.append(f"      {img_name(r)} ({r['label']}): kNN distance {r['score']:.3f}, z {r['z']:.1f}")
    action = found.params["action"]
    if action == "report":
        w = c["would_drop"]
        out.append(f"  action report: nothing dropped (drop_leaks would remove {w['drop_leaks']}, "
                   f"drop_all {w['drop_all']}; set doctor.action)")
    else:
        per = ", ".join(f"{s} {len(v)}" for s, v in found.drops["ids"].items()) or "nothing"
        out.append(f"  action {action}: dropped {c['dropped']} before the heads ({per}); listed in drops.json")
    if found.unreadable:
        out.append(f"  {len(found.unreadable)} image(s) could not be read back for the pixel check")
    return out


def text(found: Findings) -> str:
    """The summary as one block of text."""
    return "\n".join(lines(found))
