"""The report's Markdown twin: the same blocks as text, images linked from ``assets/``, strings
from the data made inert (`pipeline.inert.md_text`)."""

from __future__ import annotations

from pipeline.inert import md_text
from pipeline.report.document import (Bars, Block, Details, Document, Figure, Gallery, Table, Text, Tiles,
                                      _point_map)
from pipeline.report.html_page import _e, _numeric_cols


_md = md_text


def _md_cell(text: object) -> str:
    return _md(text).replace("|", "\\|")


def _md_block(b: Block, level: int = 3) -> str:
    if isinstance(b, Text):
        return f"> {_md(b.text)}" if b.kind == "warn" else (f"_{_md(b.text)}_" if b.kind == "note" else _md(b.text))
    if isinstance(b, Table):
        num = _numeric_cols(b)
        lines = ["| " + " | ".join(_md_cell(h) for h in b.headers) + " |",
                 "|" + "|".join("---:" if j in num else "---" for j in range(len(b.headers))) + "|"]
        lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows]
        if b.caption:
            lines += ["", f"_{_md(b.caption)}_"]
        return "\n".join(lines)
    if isinstance(b, Figure):
        return f"![{_md_cell(b.alt or b.caption)}]({b.asset.name})" + (f"\n\n_{_md(b.caption)}_" if b.caption else "")
    if isinstance(b, Gallery):
        # A table keeps galleries compact in a terminal and in code review.
        rows = []
        for c in b.cards:
            imgs = " ".join(f"![{_md_cell(label or c.title)}]({a.name})" for a, label in c.images)
            text = "<br>".join(x for x in [f"**{_md_cell(c.title)}**" if c.title else "",
                                           *(_md_cell(ln) for ln in c.lines),
                                           _md_cell(c.foot) if c.foot else ""] if x)
            rows.append(f"| {imgs} | {text} |")
        return "\n".join(["| image | details |", "|---|---|", *rows])
    if isinstance(b, Tiles):
        return "\n".join(f"- **{_md(l)}**: {_md(v)}" + (f" ({_md(s)})" if s else "") for l, v, s in b.items)
    if isinstance(b, Bars):
        return _md_block(Table(["", "", ""], [[l, t, "█" * max(1, round(20 * v / (max(x[1] for x in b.items) or 1)))]
                                             for l, v, t in b.items], numeric=[1]))
    if isinstance(b, _point_map()):
        from pipeline.report import pointmap

        return pointmap.to_markdown(b)
    if isinstance(b, Details):
        return f"{'#' * level} {_md(b.summary)}\n\n" + "\n\n".join(_md_block(x, level + 1) for x in b.blocks)
    raise TypeError(f"unknown report block {type(b).__name__}")


def to_markdown(doc: Document) -> str:
    """The same report as Markdown; images are links to ``assets/`` beside the file."""
    out = [f"# {_md(doc.title)}", "", _md(doc.subtitle), ""]
    out.append("Contents: " + " · ".join(f"[{_md(s.title)}](#{_e(s.id)})" for s in doc.sections))
    for s in doc.sections:
        out += ["", f'<a id="{_e(s.id)}"></a>', "",
                f"## {_md(s.title)}" + ("" if s.status == "ok" else f" ({_md(s.status)})"), ""]
        if s.note:
            out += [f"_{_md(s.note)}_", ""]
        for b in s.blocks:
            out += [_md_block(b), ""]
    return "\n".join(out).rstrip() + "\n"
