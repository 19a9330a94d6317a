"""Report sections for the inspect stage: feature maps, Grad-CAM, and the hoverable 2-D map."""

from __future__ import annotations

from pathlib import Path

from pipeline.inspect import artifact
from pipeline.inspect.artifact import FeatureMapRecord, InspectOutput
from pipeline.report.common import Options, file_asset, num, pct, photo_asset
from pipeline.report.document import Card, Details, Figure, Gallery, Section, Text
from pipeline.report.pointmap import PointMap

IDS = (("feature-maps", "Feature maps"), ("gradcam", "Where it looked (Grad-CAM)"), ("map", "2-D map of the features"))


def sections(folder: Path, opts: Options) -> list[Section] | None:
    """The three sections, or None when `folder` has no inspect.json (`pipeline.inspect.artifact.read`)."""
    doc = artifact.read(folder)
    if doc is None:
        return None
    return [_feature_maps(folder, doc), _gradcam(folder, doc, opts), _map(folder, doc)]


def _feature_maps(folder: Path, doc: InspectOutput) -> Section:
    recs = doc.feature_maps
    if not recs:
        return Section("feature-maps", "Feature maps", status="not run", note="inspect.json lists no feature maps.")
    by_photo: dict[int, list[FeatureMapRecord]] = {}
    for r in recs:
        by_photo.setdefault(r.photo, []).append(r)
    blocks: list = [Text(f"What the frozen backbone {doc.backbone} computes from a photo: the output of "
                         f"{len(doc.layers)} layers ({', '.join(doc.layers)}), each tile one "
                         "channel (the most active first, each scaled to its own range, yellow = high). Early "
                         "layers respond to edges and colours at high resolution; the last to whole parts, coarsely.")]
    for n, (photo, rs) in enumerate(sorted(by_photo.items())):
        figs = [Figure(photo_asset(folder / r.image, f"fmap_{photo:02d}_{r.layer}"),
                       caption=f"{r.id} · layer {r.layer}: {r.shape[2]} channels of "
                               f"{r.shape[0]}×{r.shape[1]}, the {len(r.channels)} most active shown",
                       alt=f"feature maps of {r.layer} for {r.id}") for r in rs]
        blocks += figs if n == 0 else [Details(f"{rs[0].id} ({len(rs)} layers)", figs)]
    return Section("feature-maps", "Feature maps", blocks)


def _gradcam(folder: Path, doc: InspectOutput, opts: Options) -> Section:
    recs = doc.gradcam
    title = "Where it looked (Grad-CAM)"
    if not recs:
        return Section("gradcam", title, status="not run", note="No test predictions to explain.")
    cards = []
    for i, r in enumerate(recs):
        bad = r.kind == "mistake"
        lines = [f"predicted {r.pred} ({pct(r.p_pred, 0)})"]
        if bad and r.p_true is not None:
            lines.append(f"p(true class) = {pct(r.p_true, 0)}")
        cards.append(Card([(photo_asset(folder / r.image, f"gradcam_{i:03d}", max_width=448), " | ".join(r.panels))],
                          title=f"true: {r.true}", lines=lines, kind="bad" if bad else "good", foot=r.id))
    n_bad = sum(r.kind == "mistake" for r in recs)
    return Section("gradcam", title, [
        Text(f"Grad-CAM (Selvaraju et al. 2017) of head {doc.head} at layer {doc.gradcam_layer}: red "
             "marks the regions whose activations raise the class's logit. Mistakes (red cards) show the "
             "predicted class's map, then the true class's; correct examples (green) one map. "
             f"{n_bad} mistake(s), {len(recs) - n_bad} correct example(s)."),
        Gallery(cards, min_width=max(300, 2 * opts.thumbnail_size))])


def _map(folder: Path, doc: InspectOutput) -> Section:
    m = doc.points
    title = "2-D map of the features"
    if not (Path(folder) / doc.map.image).is_file():
        return Section("map", title, status="not run", note=f"No {doc.map.image} in the inspect output.")
    labels = []
    for i, s, t, p, q in zip(m.ids, m.split, m.true, m.pred, m.p):
        mark = "" if t == p else " ✗"
        labels.append(f"{i} ({s}) · true {m.classes[t]} · predicted {m.classes[p]} {pct(q, 0)}{mark}")
    n = len(m.ids)
    wrong = sum(t != p for t, p in zip(m.true, m.pred))
    return Section("map", title, [
        Text(f"Every cached feature vector ({num(n)} photos: {', '.join(sorted(set(m.split)))}) placed in 2-D "
             f"by {m.method} (seed {m.seed}) so that neighbours in feature space stay neighbours; colour = "
             f"true class, large dots = test, crosses = test photos head {m.head} gets wrong "
             f"({num(wrong)} mistakes over all points). Hover a point to name the photo and its prediction."),
        PointMap(file_asset(Path(folder) / doc.map.image, "map"), m.pos, labels, id="feature-map",
                 caption=f"{m.method} map; hover a point for its photo and prediction.",
                 alt="2-D map of the cached features")])
