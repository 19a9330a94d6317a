"""The report's "Heads: metrics" section: every head on every split with intervals, the highlighted
head against the plain probe, how each head was fitted, the learning curve."""

from __future__ import annotations

from typing import Any, Mapping

from pipeline.heads.artifact import HeadsMetrics
from pipeline.heads.primary import selection_scores
from pipeline.report import readers
from pipeline.report.common import Log, Options, num, pct, value
from pipeline.report.document import ASSET_DIR, Asset, Figure, Section, Table, Text


def metrics_section(metrics: HeadsMetrics, primary: str | None, opts: Options, log: Log) -> Section:
    blocks: list = []
    rows, classes_ = [], []
    for name, h in metrics.heads.items():
        for split, m in h.splits.items():
            hl = readers.headline(m)
            ci = m.get("ci95") if isinstance(m.get("ci95"), Mapping) else {}
            rows.append([name, split, num(hl.get("n", "–")), pct(hl.get("accuracy")) + _ci(ci.get("accuracy")),
                         pct(hl.get("mean_per_class_accuracy")) + _ci(ci.get("mean_per_class_accuracy")),
                         num(hl.get("log_loss", "–"))])
            # Highlight the head chosen without looking at test; the best test row would be a
            # choice made on the test split, and its figure an optimistic one.
            classes_.append("best" if name == primary and split == opts.split else "")
    how = (selection_scores(metrics)[1] if opts.primary_head == "auto" or opts.primary_head not in metrics.heads
           else "named by report.primary_head")
    blocks.append(Table(["head", "split", "images", "accuracy [95% CI]", "mean per-class acc. [95% CI]",
                         "log loss"], rows, row_classes=classes_,
                        caption=f"Brackets: 95% bootstrap interval over the split's images. "
                                f"Highlighted: head {primary!r} on {opts.split}, the head chosen {how} "
                                f"(report.primary_head), not the best {opts.split} row: a head picked on "
                                f"the {opts.split} split would make its {opts.split} figure optimistic. "
                                "The plots below use it."))
    if (vs := _against_plain_probe(metrics, primary)):
        blocks.append(vs)
    hyper_rows = [[name, ", ".join(f"{k}={value(v)}" for k, v in readers.flatten(h.hyper).items()
                                   if isinstance(v, (int, float, str, bool)) and k != "seconds") or "–"]
                  for name, h in metrics.heads.items()]
    if any(r[1] != "–" for r in hyper_rows):
        blocks.append(Table(["head", "chosen hyperparameters"], hyper_rows))
    from pipeline.report import plots

    panels = [p for name, h in metrics.heads.items() for p in _training_panels(name, h.hyper)]
    if panels:
        blocks.append(Figure(Asset(f"{ASSET_DIR}/training.png", plots.training_png(panels, dpi=opts.dpi)),
                             alt="how the heads were fitted", caption="How each head was fitted (dashed: the "
                             "value chosen on the val split)."))
    curve = metrics.learning_curve or []
    # A curve needs two training-set sizes (a smoke run with one image per class has one).
    if len({point.n_train for point in curve}) >= 2:
        series = {name: [getattr(point, name) for point in curve]
                  for name in ("logreg_accuracy", "logreg_mean_per_class_accuracy", "knn_accuracy")}
        spread = {name: [getattr(point, f"{name}_std") for point in curve]
                  for name in ("logreg_accuracy", "knn_accuracy")}
        png = plots.learning_curves_png({"run": ("n_train", [point.n_train for point in curve], series, spread)},
                                        dpi=opts.dpi)
        blocks.append(Figure(Asset(f"{ASSET_DIR}/learning_curve.png", png), alt="learning curve",
                             caption="Accuracy on the test split against the number of training images "
                                     "(mean over seeded draws; band: ±1 std).", max_width=900))
    return Section("metrics", "Heads: metrics", blocks)


def _against_plain_probe(metrics: HeadsMetrics, primary: str | None) -> Text | None:
    """One sentence: the highlighted head against the plain probe on the same images (paired)."""
    base = metrics.baseline
    head = metrics.heads.get(primary) if primary else None
    vs = head.vs_plain_probe if head is not None else None
    if not (isinstance(base, Mapping) and isinstance(vs, Mapping)):
        return None
    lo, hi = vs["ci95"]
    word = {"above": "above", "below": "BELOW", "tied": "level with"}[vs["verdict"]]
    return Text(f"Head {primary!r} is {word} the plain probe on the {vs['split']} split: "
                f"{100 * vs['difference']:+.1f} points of mean per-class accuracy (95% paired bootstrap "
                f"interval {100 * lo:+.1f} to {100 * hi:+.1f}); the plain probe scores "
                f"{pct(base['mean_per_class_accuracy'])}. The plain probe is the 20-line baseline: "
                f"{base['description'].removeprefix('plain probe: ')}.",
                kind="warn" if vs["verdict"] == "below" else "p")


def _ci(interval: Any) -> str:
    """`` [lo–hi]`` in percent for a bootstrap interval, or nothing."""
    if not (isinstance(interval, (list, tuple)) and len(interval) == 2):
        return ""
    return f" [{pct(interval[0])}–{pct(interval[1])}]"


def _training_panels(name: str, hyper: Mapping[str, Any]) -> list[dict]:
    """Plot panels from a head's hyperparameter record: a sweep (list of points with a swept
    value such as C) and per-epoch losses (numeric lists named ``*loss*``)."""
    panels = []
    sweep = next((v for v in hyper.values() if isinstance(v, list) and len(v) > 1
                  and all(isinstance(p, Mapping) for p in v)), None)
    if sweep:
        xk = next(iter(sweep[0]))
        ys = {k: [p.get(k) for p in sweep] for k in sweep[0] if k != xk and "accuracy" in k}
        pts = sorted(range(len(sweep)), key=lambda i: sweep[i][xk])
        if ys and all(isinstance(sweep[i][xk], (int, float)) for i in pts):
            panels.append({"title": f"{name}: {xk} sweep", "xlabel": xk, "x": [sweep[i][xk] for i in pts],
                           "series": {k: [v[i] for i in pts] for k, v in ys.items()}, "percent": True,
                           "logx": min(sweep[i][xk] for i in pts) > 0,
                           "mark": hyper.get(xk) if isinstance(hyper.get(xk), (int, float)) else None})
    losses = {k: v for k, v in hyper.items() if "loss" in k and isinstance(v, list) and len(v) > 1
              and all(isinstance(x, (int, float)) for x in v)}
    if losses:
        n = max(len(v) for v in losses.values())
        best = hyper.get("best_epoch")
        panels.append({"title": f"{name}: loss per epoch", "xlabel": "epoch", "x": list(range(1, n + 1)),
                       "series": {k: v + [None] * (n - len(v)) for k, v in losses.items()},
                       "mark": best if isinstance(best, int) else None})  # best_epoch is 1-based
    return panels
