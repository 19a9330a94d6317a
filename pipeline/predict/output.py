"""`predict`'s answer as a text table, JSON or CSV (one row per photo; skipped files apart)."""

from __future__ import annotations

import csv
import io
import json

from pipeline.errors import terminal_safe
from pipeline.predict.predict import PredictResult
from pipeline.show import text_table

FORMATS = ("table", "json", "csv")

#: A spreadsheet reads a cell starting with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: object) -> str:
    """A CSV cell from the data: control characters escaped, and a leading ``= + - @`` quoted
    with an apostrophe so that a spreadsheet shows it as text instead of running it."""
    t = terminal_safe(str(value))
    return "'" + t if t.startswith(_FORMULA_START) else t


def render(result: PredictResult, fmt: str, top_k: int) -> str:
    """`result` in `fmt`. Names from the data are inert in every format: escaped control
    characters in the table and CSV (and no formula in CSV), JSON escapes in JSON.

    Args:
      result: from `predict_files`.
      fmt: ``table`` (aligned text, skipped files listed below), ``json`` (``{"head", "classes",
        "predictions": [{"file", "class", "probability", "next": [[class, p], ...]}], "skipped":
        [{"file", "kind", "reason"}]}``) or ``csv`` (file, class, probability, then next_i /
        p_next_i columns; skipped files get an empty class and their reason in ``error``).
      top_k: how many classes to list after the top one.
    """
    rows = []
    for p in result.predictions:
        top = p.top(result.classes, top_k + 1)
        rows.append({"file": p.file, "class": top[0][0], "probability": round(top[0][1], 6),
                     "next": [[c, round(v, 6)] for c, v in top[1:]]})
    skipped = [{"file": b.file, "kind": b.kind, "reason": b.reason} for b in result.bad]
    if fmt == "json":
        return json.dumps({"head": result.head, "classes": result.classes, "predictions": rows,
                           "skipped": skipped}, indent=1)
    if fmt == "csv":
        k = max((len(r["next"]) for r in rows), default=0)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["file", "class", "probability", *[c for i in range(1, k + 1) for c in (f"next_{i}", f"p_next_{i}")],
                    "error"])
        for r in rows:
            cells = [c for pair in r["next"] for c in pair]
            cells = [csv_text(c) if isinstance(c, str) else c for c in cells]
            w.writerow([csv_text(r["file"]), csv_text(r["class"]), f"{r['probability']:.6f}", *cells,
                        *[""] * (2 * k - len(cells)), ""])
        for s in skipped:
            w.writerow([csv_text(s["file"]), "", "", *[""] * (2 * k), csv_text(f"{s['kind']}: {s['reason']}")])
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    t = terminal_safe
    body = text_table(["file", "class", "prob", "next"],
                      [[t(r["file"]), t(r["class"]), f"{r['probability']:.4f}",
                        ", ".join(f"{t(c)} {v:.3f}" for c, v in r["next"])] for r in rows], right=[2])
    lines = [f"head {result.head}: {len(rows)} photo(s) in {result.seconds:.2f} s", body]
    if skipped:
        lines += ["", f"skipped {len(skipped)} file(s):"]
        lines += [f"  {t(s['file'])}: {t(s['reason'])} ({s['kind']})" for s in skipped]
    return "\n".join(lines)
