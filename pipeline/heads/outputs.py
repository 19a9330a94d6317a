"""What the heads stage writes and prints: metrics per split, test predictions, the summary table."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")


def save(name: str, kind: str, params: Any, config: dict, classes: list[str], out: Path) -> None:
    """Write one fitted head (see `pipeline.heads.trained.save_head`)."""
    from pipeline.heads.trained import save_head

    save_head(out, name, kind, params, config, classes)


def evaluate(logits_fn, data: dict, classes: list[str], out: Path, head: str, top_k: int,
              hyper: dict) -> dict:
    """Metrics per split for a head taking raw features; writes predictions_<head>.json (test)."""
    from pipeline.heads.metrics import classification_report, softmax

    result: dict[str, Any] = {"hyperparameters": hyper}
    for split in SPLITS:
        if split not in data or len(data[split][1]) == 0:
            continue
        x, y, ids = data[split]
        probs = softmax(logits_fn(x))
        result[split] = classification_report(probs, y, classes)
        if split == "test":
            write_predictions(out / f"predictions_{head}.json", probs, y, ids, classes, top_k)
    return result


def write_predictions(path: Path, probs: np.ndarray, y: np.ndarray, ids: list, classes: list[str],
                       top_k: int) -> None:
    """Per test image: id, true and predicted class, their probabilities, and the top-k classes."""
    k = min(top_k, len(classes))
    top = np.argsort(-probs, axis=1)[:, :k]
    pred = top[:, 0]
    rows = [{"id": ids[i], "true": classes[y[i]], "pred": classes[pred[i]],
             "p_pred": round(float(probs[i, pred[i]]), 6), "p_true": round(float(probs[i, y[i]]), 6),
             "top": [[classes[j], round(float(probs[i, j]), 6)] for j in top[i]]}
            for i in range(len(y))]
    # One prediction per line, each dumped by json's C encoder (`indent` falls back to the
    # much slower pure-Python one).
    head = json.dumps({"classes": classes, "top_k": k})[:-1]
    body = ",\n".join(json.dumps(r) for r in rows)
    path.write_text(f'{head}, "predictions": [\n{body}\n]}}\n')


def finite(obj):
    """JSON without NaN/Infinity (not valid JSON): those become null."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def with_ci(m: dict, metric: str) -> str:
    """``0.9012 [0.8870, 0.9150]`` from one split's report (the interval where recorded)."""
    ci = (m.get("ci95") or {}).get(metric)
    return f"{m[metric]:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def table(metrics: dict, timings: dict) -> str:
    """The end-of-stage table as text (rich), for ctx.log."""
    from rich.console import Console
    from rich.table import Table

    split = "test" if "test" in metrics["heads"]["logreg"] else "val"
    table = Table(title=f"heads ({split} split)")
    for col in ("head", "accuracy (95% CI)", "mean per-class acc. (95% CI)", "log loss", "seconds"):
        table.add_column(col, justify="left" if col == "head" else "right")
    for head in ("logreg", "mlp"):
        m = metrics["heads"][head][split]
        table.add_row(head, with_ci(m, "accuracy"), with_ci(m, "mean_per_class_accuracy"),
                      f"{m['log_loss']:.4f}", f"{timings[head]:.2f}")
    base = metrics.get("baseline")
    if base and base["split"] == split:
        table.add_row("plain probe", f"{base['accuracy']:.4f}", f"{base['mean_per_class_accuracy']:.4f}", "", "")
    buf = io.StringIO()
    console = Console(file=buf, width=100, force_terminal=False)
    console.print(table)
    for head in ("logreg", "mlp"):
        vs = metrics["heads"][head].get("vs_plain_probe")
        if vs:
            console.print(f"{head} vs the plain probe: {vs['difference']:+.4f} mean per-class accuracy "
                          f"[{vs['ci95'][0]:+.4f}, {vs['ci95'][1]:+.4f}], {vs['verdict']}")
    if metrics.get("learning_curve"):
        curve = Table(title=f"learning curve (test accuracy, mean of draws)")
        for col in ("images/class", "n train", "logreg", "kNN"):
            curve.add_column(col, justify="right")
        for row in metrics["learning_curve"]:
            curve.add_row(str(row["shots"]), f"{row['n_train']:.0f}", f"{row['logreg_accuracy']:.4f}",
                          f"{row['knn_accuracy']:.4f}")
        console.print(curve)
    return buf.getvalue().rstrip()
