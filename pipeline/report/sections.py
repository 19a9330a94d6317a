"""Build the report's sections from the stages' output folders.

Each `*_section` function takes what it needs (folders, manifests, the report's params) and
returns one `Section`; a stage whose output is absent gives a "not run" section that says why, so
a run without the gradient stages still gets a useful page.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from pipeline.finetune.artifact import read_with_finetune
from pipeline.gradients import attack_artifact
from pipeline.heads.primary import choose_primary, pick_split
from pipeline.heads.artifact import HeadsMetrics, read_predictions
from pipeline.report import galleries, readers
from pipeline.report.common import (Log, Options, num, pct, plot_text, safe_name, seconds, thumbnail,
                                   top_k_text, value)
from pipeline.report.heads_section import metrics_section
from pipeline.report.document import (ASSET_DIR, Asset, Bars, Card, Details, Document, Figure,
                                      Gallery, Section, Table, Text, Tiles)
from pipeline.sources.dataset import DataSet

# --- sections ------------------------------------------------------------------------------------

def not_run(id: str, title: str, stage: str, inputs: Mapping[str, Path], manifests: Mapping[str, Any],
            what: str) -> Section:
    """A greyed section saying why there is nothing to show."""
    if stage not in inputs:
        note = f"The {stage} stage is not part of this pipeline, so there is no {what}."
    else:
        summ = (manifests.get(stage) or {}).get("summary") or {}
        why = next((str(summ[k]) for k in ("reason", "skipped", "disabled", "note") if summ.get(k)), "")
        note = (f"The {stage} stage produced no {what}" + (f": {why}." if why else
                f" (nothing found in {inputs[stage]}); it may be disabled in params."))
    return Section(id, title, status="not run", note=note)


def overview_section(opts: Options, heads: HeadsMetrics | None, primary: str | None, classes: list[str] | None,
                     sizes: Mapping[str, int], adv_metrics: attack_artifact.AttackOutput | None,
                     manifests: Mapping[str, Any], params: Mapping[str, Mapping]) -> Section:
    tiles = []
    if heads and primary:
        split = pick_split(heads.heads[primary].splits, opts.split)
        m = heads.heads[primary].splits.get(split, {})
        tiles.append((f"{split} accuracy", pct(m.get("accuracy")), f"head {primary}"))
        if "mean_per_class_accuracy" in m:
            tiles.append(("mean per-class accuracy", pct(m["mean_per_class_accuracy"]), f"head {primary}, {split}"))
    if classes:
        tiles.append(("classes", str(len(classes)), ", ".join(f"{k} {v}" for k, v in sizes.items())))
    if adv_metrics and (head := galleries.attack_headline(adv_metrics)):
        method, rate, what = head
        tiles.append((f"attack success ({method})", pct(rate), what))
    total = sum((m or {}).get("seconds") or 0 for m in manifests.values())
    tiles.append(("compute time", seconds(total), "all stages of this run"))
    blocks: list = [Tiles(tiles)]
    facts = []
    if (bb := params.get("backbone", {}).get("name")):
        facts.append(f"Backbone {bb}")
    ds = params.get("data", {})
    if ds.get("source") == "folder":
        facts.append(f"photos from the folder {ds.get('path')}")
    elif ds.get("source") == "sample":
        facts.append("the embedded demo sample (111 Oxford-IIIT Pet photos, 3 per breed: a demo, not a "
                     "benchmark; -S data.source=tfds runs the full dataset)")
    elif ds.get("source"):
        facts.append(f"{ds.get('source')} dataset {ds.get('name', '?')}")
    if facts:
        blocks.append(Text("; ".join(facts) + "."))
    rows = [[name, (m or {}).get("key", "–"), (m or {}).get("ended", "–")] for name, m in manifests.items()]
    blocks.append(Details("Stage outputs (cache keys)", [Table(["stage", "key", "finished"], rows)]))
    return Section("overview", "Overview", blocks)


def params_section(params: Mapping[str, Mapping], defaults: Mapping[str, Mapping]) -> Section:
    rows = readers.param_rows(params, defaults)
    changed = [r for r in rows if r[3]]
    blocks: list = []
    if changed:
        blocks.append(Text(f"{len(changed)} of {len(rows)} params differ from their defaults:"))
        blocks.append(Table(["param", "this run", "default"],
                            [[k, value(v), value(d)] for k, v, d, _ in changed],
                            row_classes=["changed"] * len(changed)))
    else:
        blocks.append(Text(f"All {len(rows)} params have their default values."))
    blocks.append(Details(f"All params ({len(rows)})", [Table(
        ["param", "value", "default"], [[k, value(v), value(d) if c else "same"] for k, v, d, c in rows],
        row_classes=["changed" if c else "" for *_, c in rows])]))
    return Section("params", "Params", blocks)


def data_section(data: DataSet | None, classes: list[str] | None, sizes: Mapping[str, int]) -> Section:
    blocks: list = []
    if sizes:
        blocks.append(Table(["split", "images"], [[s, num(n)] for s, n in sizes.items()] +
                            [["total", num(sum(sizes.values()))]]))
    if classes:
        counts = {s: Counter(classes[label] for label in rec.labels) for s, rec in (data.splits if data else {}).items()}
        if counts and any(counts.values()):
            head = ["class", *counts]
            rows = [[c, *(num(counts[s].get(c, 0)) for s in counts)] for c in classes]
            blocks.append(Details(f"{len(classes)} classes, images per split", [Table(head, rows)]))
        else:
            blocks.append(Text(f"{len(classes)} classes: " + ", ".join(classes) + "."))
    skipped = readers.read_skipped(data)
    if skipped:
        blocks.append(Text(f"{len(skipped)} file(s) were skipped:", kind="warn"))
        blocks.append(Table(["file", "reason"], [[p, r] for p, r in skipped]))
    elif data is not None:
        blocks.append(Text("No files were skipped.", kind="note"))
    return Section("data", "Data", blocks)


def confusion_section(heads: HeadsMetrics, primary: str, classes: list[str], opts: Options) -> Section:
    from pipeline.report import plots

    h = heads.heads[primary]
    split = pick_split(h.splits, opts.split)
    cm = h.splits.get(split, {}).get("confusion_matrix")
    if not cm or len(cm) != len(classes):
        return Section("confusion", "Confusion matrix", status="not run",
                       note=f"metrics.json has no {len(classes)}-class confusion matrix for {primary} on {split}.")
    png = plots.confusion_matrix_png(cm, [plot_text(c) for c in classes], title=f"{primary} on {split}", dpi=opts.dpi)
    return Section("confusion", "Confusion matrix", [Figure(
        Asset(f"{ASSET_DIR}/confusion_{safe_name(primary)}_{split}.png", png),
        caption=f"Rows: true class; columns: predicted class; numbers: image counts; blue: correct, red: "
                f"mistakes, darker = larger share of the true class. Head {primary}, {split} split.",
        alt=f"confusion matrix of {primary} on {split}")])


def per_class_section(heads: HeadsMetrics, primary: str, classes: list[str], opts: Options) -> Section:
    from pipeline.report import plots

    h = heads.heads[primary]
    split = pick_split(h.splits, opts.split)
    m = h.splits.get(split, {})
    per = m.get("per_class") or {}
    if not per:
        return Section("per-class", "Per-class accuracy", status="not run",
                       note=f"metrics.json has no per-class figures for {primary} on {split}.")
    # Accuracy of a class = its recall; classes without test images cannot be ranked.
    items = [(c, float(v.get("recall", 0.0)), int(v.get("support", 0))) for c, v in per.items()
             if int(v.get("support", 1)) > 0]
    items.sort(key=lambda t: (t[1], -t[2], t[0]))
    png = plots.per_class_bars_png([plot_text(c) for c, _, _ in items], [v for _, v, _ in items], [n for *_, n in items],
                                   reference=m.get("accuracy"), title=f"{primary} on {split}: worst classes first",
                                   dpi=opts.dpi)
    table = Table(["class", "precision", "recall (accuracy)", "F1", "images"],
                  [[c, pct(per[c].get("precision")), pct(per[c].get("recall")), pct(per[c].get("f1")),
                    num(per[c].get("support"))] for c, _, _ in items])
    return Section("per-class", "Per-class accuracy", [
        Figure(Asset(f"{ASSET_DIR}/per_class_{safe_name(primary)}_{split}.png", png),
               caption=f"Share of each class's {split} images that {primary} gets right, worst first; "
                       f"dashed line: overall accuracy.", alt="per-class accuracy bars", max_width=900),
        Details("Precision, recall and F1 per class", [table])])


def mistakes_section(heads_dir: Path, primary: str, classes: list[str], finder: readers.ImageFinder,
                     opts: Options) -> Section:
    preds = read_predictions(heads_dir, primary)
    title = "Most confident mistakes"
    if preds is None:
        return Section("mistakes", title, status="not run", note=f"No predictions_{primary}.json in the heads output.")
    wrong = [r for r in preds if r.true != r.pred]
    wrong.sort(key=lambda r: -(r.p_pred if r.p_pred is not None else 0.0))
    shown = wrong[:opts.max_mistakes]
    blocks: list = [Text(f"{len(wrong)} of {len(preds)} {opts.split} images are misclassified by {primary}; "
                         f"the {len(shown)} it was surest about:")]
    cards, missing = [], 0
    for i, r in enumerate(shown):
        src = finder.source(r.id) if r.id else None
        thumb = thumbnail(src, opts.thumbnail_size, f"mistake_{i:03d}") if src else None
        missing += thumb is None
        name = lambda k: classes[k] if 0 <= k < len(classes) else str(k)  # noqa: E731
        lines = [f"predicted {name(r.pred)} ({pct(r.p_pred, 0)})"]
        if r.p_true is not None:
            lines.append(f"p(true class) = {pct(r.p_true, 0)}")
        if (top := top_k_text(r.top[1:3])):
            lines.append(f"next: {top}")
        cards.append(Card([(thumb, "")] if thumb else [], title=f"true: {name(r.true)}", lines=lines,
                          kind="bad", foot=r.id))
    if cards:
        blocks.append(Gallery(cards, min_width=max(150, opts.thumbnail_size)))
    if missing:
        blocks.append(Text(f"{missing} original image(s) could not be found on disk or among the data "
                           f"stage's thumbnails, so they have no thumbnail.", kind="note"))
    return Section("mistakes", title, blocks)


def timing_section(manifests: Mapping[str, Any], report_started: float | None = None) -> Section:
    """Per stage: the time its output took; the report's own row is its time so far.

    Args:
      manifests: stage name -> its manifest (seconds, start, host, summary).
      report_started: `time.perf_counter()` when the report stage started, or None.
    """
    import datetime
    import socket
    import time

    rows, bars = [], []
    for name, m in manifests.items():
        if not m:
            continue
        s = m.get("seconds")
        bars.append((name, float(s or 0.0), seconds(s)))
        summ = m.get("summary") or {}
        short = ", ".join(f"{k}={num(v)}" for k, v in list(summ.items())[:4] if isinstance(v, (int, float, str, bool)))
        rows.append([name, seconds(s), m.get("started", "–"), m.get("host", "–"), short])
    if report_started is not None:
        s = time.perf_counter() - report_started
        bars.append(("report", s, seconds(s)))
        rows.append(["report", seconds(s), datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     socket.gethostname(), "this page, up to this table (writing the files follows)"])
    if not rows:
        return Section("timing", "Timing", status="not run", note="No stage manifests found.")
    versions = next((m.get("versions") for m in manifests.values() if m and m.get("versions")), {})
    blocks: list = [Bars(bars), Table(["stage", "time", "started", "host", "summary"], rows,
                                      caption="Time each stage took when its output was computed (a reused "
                                              "output keeps the time of the run that made it).")]
    if versions:
        blocks.append(Details("Library versions", [Table(["library", "version"], [[k, v] for k, v in versions.items()])]))
    return Section("timing", "Timing", blocks)


def _inspect_sections(inputs: Mapping[str, Path], manifests: Mapping[str, Any], opts: Options) -> list[Section]:
    from pipeline.report import inspect_section

    got = inspect_section.sections(inputs["inspect"], opts) if inputs.get("inspect") else None
    return got or [not_run(i, t, "inspect", inputs, manifests, "inspection") for i, t in inspect_section.IDS]


# --- the page ------------------------------------------------------------------------------------

def build(inputs: Mapping[str, Path], own_params: Mapping[str, Any], schema: Mapping[str, type],
          opts: Options, log: Log = lambda m: None, started: float | None = None) -> Document:
    """The whole report.

    Args:
      inputs: upstream stage name -> its output folder, in the graph's order (absent names: stage
        not in the graph).
      own_params: the report's declared params sections (dataclasses), shown with the others.
      schema: params section -> dataclass for every section (for the defaults).
      opts: the report's knobs.
      log: progress lines.
      started: `time.perf_counter()` when the report stage started (its row in the timing table).

    Returns:
      The Document; `writer.write` puts it on disk.
    """
    manifests = {n: readers.manifest(folder) for n, folder in inputs.items()}
    params = readers.run_params(manifests, own_params)
    data_dir, feat_dir = inputs.get("data"), inputs.get("features")
    heads_dir = inputs.get("heads")
    heads = read_with_finetune(heads_dir, inputs.get("finetune"))
    data = readers.read_data(data_dir)
    classes = readers.read_classes(data, feat_dir) or (heads.classes if heads else None)
    sizes = readers.split_sizes(data, feat_dir)
    primary = choose_primary(heads, opts.primary_head, log)
    adv_dir = inputs.get("adversarial")
    adv_metrics = attack_artifact.read(adv_dir)

    sections = [overview_section(opts, heads, primary, classes, sizes, adv_metrics, manifests, params),
                params_section(params, readers.section_defaults(schema))]
    sections.append(data_section(data, classes, sizes) if (data_dir or feat_dir)
                    else not_run("data", "Data", "data", inputs, manifests, "dataset summary"))
    from pipeline.report import doctor_section as doctor_report

    doctor_dir = inputs.get("doctor")
    finder = readers.ImageFinder(data_dir)
    sections.append((doctor_report.section(doctor_dir, finder, opts) if doctor_dir else None)
                    or not_run(doctor_report.ID, doctor_report.TITLE, "doctor", inputs, manifests, "doctor.json"))
    if heads and heads.heads and primary:
        log(f"primary head: {primary}")
        sections.append(metrics_section(heads, primary, opts, log))
        if classes:
            sections.append(confusion_section(heads, primary, classes, opts))
            sections.append(per_class_section(heads, primary, classes, opts))
            preds_dir = inputs.get("finetune") if primary == "finetune" else heads_dir
            sections.append(mistakes_section(preds_dir, primary, classes, finder, opts))
    else:
        for id_, title in (("metrics", "Heads: metrics"), ("confusion", "Confusion matrix"),
                           ("per-class", "Per-class accuracy"), ("mistakes", "Most confident mistakes")):
            sections.append(not_run(id_, title, "heads", inputs, manifests, "metrics.json"))
    sections += _inspect_sections(inputs, manifests, opts)
    ideal_dir = inputs.get("ideal")
    sections.append((galleries.ideal_section(ideal_dir, opts, log) if ideal_dir else None)
                    or not_run("ideal", "Ideal images", "ideal", inputs, manifests, "ideal images"))
    sections.append((galleries.adversarial_section(adv_dir, opts) if adv_dir else None)
                    or not_run("adversarial", "Adversarial examples", "adversarial", inputs, manifests,
                               "adversarial examples"))
    sections.append(timing_section(manifests, started))

    bb = params.get("backbone", {}).get("name")
    when = max((m or {}).get("ended", "") for m in manifests.values()) if manifests else ""
    sub = " · ".join(x for x in [f"backbone {bb}" if bb else "", f"{len(classes)} classes" if classes else "",
                                 f"head {primary}" if primary else "", f"last stage finished {when}" if when else ""] if x)
    return Document(opts.title, sub, sections)
