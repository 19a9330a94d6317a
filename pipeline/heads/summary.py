"""The heads stage's end-of-run table, as the terminal shows it (the stage logs it after `write`)."""

from __future__ import annotations

from typing import Any, Mapping

from pipeline.heads.artifact import HeadsMetrics


def table(m: HeadsMetrics) -> str:
    """The heads stage's end-of-run table as text (rich): each head's scores with their 95%
    intervals on the judged split, the plain probe, the paired differences, the learning curve."""
    import io

    from rich.console import Console
    from rich.table import Table

    split = m.judged_split()
    heads = Table(title=f"heads ({split} split)")
    for col in ("head", "accuracy (95% CI)", "mean per-class acc. (95% CI)", "log loss", "seconds"):
        heads.add_column(col, justify="left" if col == "head" else "right")
    for name, h in m.heads.items():
        s = h.splits[split]
        heads.add_row(name, _with_ci(s, "accuracy"), _with_ci(s, "mean_per_class_accuracy"),
                      f"{s['log_loss']:.4f}", f"{m.seconds.get(name, float('nan')):.2f}")
    base = m.baseline
    if base and base["split"] == split:
        heads.add_row("plain probe", f"{base['accuracy']:.4f}", f"{base['mean_per_class_accuracy']:.4f}", "", "")
    buf = io.StringIO()
    console = Console(file=buf, width=100, force_terminal=False)
    console.print(heads)
    for name, h in m.heads.items():
        vs = h.vs_plain_probe
        if vs:
            console.print(f"{name} vs the plain probe: {vs['difference']:+.4f} mean per-class accuracy "
                          f"[{vs['ci95'][0]:+.4f}, {vs['ci95'][1]:+.4f}], {vs['verdict']}")
    if m.learning_curve:
        curve = Table(title="learning curve (test accuracy, mean of draws)")
        for col in ("images/class", "n train", "logreg", "kNN"):
            curve.add_column(col, justify="right")
        for row in m.learning_curve:
            curve.add_row(str(row.shots), f"{row.n_train:.0f}", f"{row.logreg_accuracy:.4f}",
                          f"{row.knn_accuracy:.4f}")
        console.print(curve)
    return buf.getvalue().rstrip()


def _with_ci(m: Mapping[str, Any], metric: str) -> str:
    """``0.9012 [0.8870, 0.9150]`` from one split's report (the interval where recorded)."""
    ci = (m.get("ci95") or {}).get(metric)
    return f"{m[metric]:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
