"""The report as data (sections of blocks), and its two renderings: one HTML page and Markdown.

Sections are built from plain blocks (text, tables, figures, galleries, headline tiles, bars), so
each renderer is a small function per block and the page builders never write markup. Images are
`Asset`s: the HTML inlines them as base64 data URIs (the page works alone, offline, copied
anywhere); the Markdown twin links the same bytes written beside it under ``assets/``.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import re
from pathlib import Path
from typing import Sequence, Union

ASSET_DIR = "assets"


@dataclasses.dataclass(frozen=True)
class Asset:
    """An image file of the report. `name` is its path relative to the report (``assets/x.png``)."""

    name: str
    data: bytes = dataclasses.field(repr=False)

    @property
    def mime(self) -> str:
        ext = self.name.rsplit(".", 1)[-1].lower()
        return {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg",
                "gif": "image/gif", "webp": "image/webp"}.get(ext, "application/octet-stream")

    def data_uri(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


@dataclasses.dataclass
class Text:
    """A paragraph of plain text. kind: ``p`` (body), ``note`` (muted), ``warn`` (highlighted)."""

    text: str
    kind: str = "p"


@dataclasses.dataclass
class Table:
    """A table of already formatted cells.

    Attributes:
      headers: column titles.
      rows: one list of cell strings per row.
      numeric: columns to right-align (indices); defaults to those whose cells look like numbers.
      row_classes: optional CSS class per row (``changed``, ``bad``, ``best``), same length as rows.
      caption: one line under the table.
    """

    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    numeric: Sequence[int] | None = None
    row_classes: Sequence[str] | None = None
    caption: str = ""


@dataclasses.dataclass
class Figure:
    asset: Asset
    caption: str = ""
    alt: str = ""
    max_width: int | None = None  # CSS pixels; None = as wide as the page allows


@dataclasses.dataclass
class Card:
    """One gallery item: one or more images side by side, a title and a few lines under them.

    Attributes:
      images: (asset, label under the image) pairs.
      title: bold first line.
      lines: further lines of text.
      kind: CSS flavour: ``""``, ``bad`` (a mistake), ``good`` (a success).
      foot: small muted last line (an image id).
    """

    images: Sequence[tuple[Asset, str]]
    title: str = ""
    lines: Sequence[str] = ()
    kind: str = ""
    foot: str = ""


@dataclasses.dataclass
class Gallery:
    cards: Sequence[Card]
    min_width: int = 170  # CSS pixels per card column


@dataclasses.dataclass
class Tiles:
    """Headline numbers: (label, value, small print) each."""

    items: Sequence[tuple[str, str, str]]


@dataclasses.dataclass
class Bars:
    """A horizontal bar chart drawn with CSS: (label, value, text shown beside the bar) each."""

    items: Sequence[tuple[str, float, str]]


@dataclasses.dataclass
class Details:
    """A collapsed part (HTML ``<details>``); Markdown shows it as a small sub-heading."""

    summary: str
    blocks: Sequence["Block"]


def _point_map() -> type:
    from pipeline.report.pointmap import PointMap  # a block with its own inline script (inspect's map)

    return PointMap


Block = Union[Text, Table, Figure, Gallery, Tiles, Bars, Details, "PointMap"]


@dataclasses.dataclass
class Section:
    """One part of the page. status ``ok`` shows the blocks; anything else (``not run``) is
    shown greyed with `note` saying why, so a missing stage never hides the rest of the report."""

    id: str
    title: str
    blocks: list[Block] = dataclasses.field(default_factory=list)
    status: str = "ok"
    note: str = ""


@dataclasses.dataclass
class Document:
    title: str
    subtitle: str
    sections: list[Section]

    def assets(self) -> list[Asset]:
        """Every distinct asset in page order."""
        seen: dict[str, Asset] = {}

        def visit(blocks: Sequence[Block]) -> None:
            for b in blocks:
                if isinstance(b, (Figure, _point_map())):
                    seen.setdefault(b.asset.name, b.asset)
                elif isinstance(b, Gallery):
                    for c in b.cards:
                        for a, _ in c.images:
                            seen.setdefault(a.name, a)
                elif isinstance(b, Details):
                    visit(b.blocks)

        for s in self.sections:
            visit(s.blocks)
        return list(seen.values())


def write(doc: Document, out_dir: Path, html_name: str = "report.html",
          md_name: str = "report.md") -> tuple[Path, Path]:
    """Write the HTML page, the Markdown twin, and the assets the Markdown links to.

    Returns:
      (html path, markdown path).
    """
    out_dir = Path(out_dir)
    for a in doc.assets():
        p = out_dir / a.name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(a.data)
    html_path, md_path = out_dir / html_name, out_dir / md_name
    # A file name that is not UTF-8 reaches here as lone surrogates (os.fsdecode): written as
    # visible \\udcxx escapes (inert text, and valid escapes inside the page's JSON).
    html_path.write_text(to_html(doc), encoding="utf-8", errors="backslashreplace")
    md_path.write_text(to_markdown(doc), encoding="utf-8", errors="backslashreplace")
    return html_path, md_path


# --- HTML ----------------------------------------------------------------------------------------

# The page may load nothing from anywhere (data: images and inline style/script only); a broken
# promise shows up as a console error, which the browser test catches.
_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'")

_CSS = """
:root { --fg:#1d2330; --muted:#667085; --line:#e4e7ec; --bg:#f6f7f9; --card:#fff;
  --accent:#2f6fdf; --bad:#c4320a; --bad-bg:#fff1ec; --good:#027a48; --good-bg:#ecfdf3;
  --changed-bg:#fff8db; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue",
  Arial, sans-serif; color:var(--fg); background:var(--bg); }
header.top { background:#101828; color:#fff; padding:22px 32px 18px; }
header.top h1 { margin:0; font-size:26px; font-weight:650; }
header.top .sub { color:#b8c0cc; margin-top:4px; font-size:14px; }
nav { position:sticky; top:0; z-index:5; background:#1d2939; padding:0 32px; overflow-x:auto;
  white-space:nowrap; }
nav a { display:inline-block; color:#d0d5dd; text-decoration:none; padding:9px 10px; font-size:13px; }
nav a:hover { color:#fff; background:#344054; }
nav a.off { color:#7a8599; }
main { max-width:1240px; margin:0 auto; padding:18px 32px 60px; }
section { background:var(--card); border:1px solid var(--line); border-radius:10px;
  padding:18px 22px; margin:18px 0; scroll-margin-top:44px; }
section.off { background:#fafafa; color:var(--muted); }
section h2 { margin:0 0 12px; font-size:20px; font-weight:650; }
section h2 .badge { font-size:12px; font-weight:600; vertical-align:middle; margin-left:8px;
  padding:2px 8px; border-radius:10px; background:#eaecf0; color:#475467; }
p { margin:8px 0; } p.note { color:var(--muted); font-size:13.5px; }
p.warn { background:var(--bad-bg); color:var(--bad); padding:8px 12px; border-radius:6px; }
table { border-collapse:collapse; margin:8px 0 6px; font-size:13.5px; }
th, td { padding:5px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { background:#f2f4f7; font-weight:600; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
tr.changed td { background:var(--changed-bg); }
tr.best td { background:var(--good-bg); font-weight:600; }
tr.bad td { color:var(--bad); }
.tablewrap { overflow-x:auto; max-width:100%; }
.caption { color:var(--muted); font-size:13px; margin:2px 0 10px; }
figure { margin:10px 0; } figure img { max-width:100%; height:auto; display:block;
  border:1px solid var(--line); border-radius:6px; background:#fff; }
figcaption { color:var(--muted); font-size:13px; margin-top:4px; }
.tiles { display:flex; flex-wrap:wrap; gap:12px; margin:4px 0 8px; }
.tile { flex:1 1 170px; border:1px solid var(--line); border-radius:8px; padding:10px 14px;
  background:#fcfcfd; }
.tile .v { font-size:26px; font-weight:700; color:var(--accent); line-height:1.2; }
.tile .l { font-size:12.5px; color:var(--muted); text-transform:uppercase; letter-spacing:.04em; }
.tile .s { font-size:12.5px; color:var(--muted); }
.gallery { display:grid; gap:12px; margin:8px 0; }
.card { border:1px solid var(--line); border-radius:8px; padding:8px; background:#fff; font-size:12.5px; }
.card.bad { border-color:#f7c4b3; background:var(--bad-bg); }
.card.good { border-color:#a6f4c5; background:var(--good-bg); }
.card .imgs { display:flex; gap:6px; }
.card .imgs div { flex:1 1 0; min-width:0; text-align:center; }
.card img { width:100%; height:auto; display:block; border-radius:4px; image-rendering:auto; }
.card .il { color:var(--muted); font-size:11.5px; margin-top:2px; }
.card .t { font-weight:650; margin-top:6px; overflow-wrap:anywhere; }
.card .ln { color:#344054; overflow-wrap:anywhere; }
.card .ft { color:var(--muted); font-size:11px; margin-top:3px; overflow-wrap:anywhere; }
.bars { display:grid; grid-template-columns:max-content 1fr max-content; gap:4px 10px;
  align-items:center; font-size:13.5px; margin:8px 0; }
.bars .bar { height:14px; background:var(--accent); border-radius:3px; min-width:2px; }
details { margin:8px 0; } summary { cursor:pointer; color:var(--accent); font-weight:600; }
footer { color:var(--muted); font-size:12.5px; text-align:center; margin-top:24px; }
"""

# Collects script errors, failed loads and console.error calls from the very start of the page;
# the check at the end writes the result into <body data-...> for `chromium --dump-dom`.
_HEAD_SCRIPT = """
window.__reportErrors = [];
window.addEventListener('error', function (e) {
  var t = e.target && e.target !== window ? (e.target.tagName || 'element') + ' failed to load'
                                          : String(e.message || 'error');
  window.__reportErrors.push(t);
}, true);
(function () { var orig = console.error; console.error = function () {
  window.__reportErrors.push('console.error: ' + Array.prototype.join.call(arguments, ' '));
  return orig.apply(console, arguments); }; })();
"""

_TAIL_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                   .map(function (i) { return i.getAttribute('alt') || '(no alt)'; });
  var b = document.body.dataset;
  b.images = String(imgs.length);
  b.imagesBroken = JSON.stringify(broken);
  b.imagesOk = broken.length === 0 ? 'true' : 'false';
  b.errors = JSON.stringify(window.__reportErrors);
  b.checked = 'true';
});
"""


def visible(text: object) -> str:
    """`text` with control characters (a terminal escape, a stray NUL) and the Unicode line
    separators shown as escapes (``\\x1b``): a name from the data reads the same everywhere,
    and a report printed in a terminal cannot drive it. Newlines and tabs stay."""
    t = str(text)
    if t.isprintable():
        return t
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in t)


def _e(text: object) -> str:
    return html.escape(visible(text), quote=True)


def _looks_numeric(cell: str) -> bool:
    s = str(cell).strip().rstrip("%s").replace(",", "").replace("+", "").replace("−", "-")
    if s.startswith("-"):
        s = s[1:]
    return bool(s) and s.replace(".", "", 1).isdigit()


def _numeric_cols(t: Table) -> set[int]:
    if t.numeric is not None:
        return set(t.numeric)
    cols = set()
    for j in range(len(t.headers)):
        cells = [r[j] for r in t.rows if j < len(r) and str(r[j]).strip() not in ("", "–", "-")]
        if cells and all(_looks_numeric(c) for c in cells):
            cols.add(j)
    return cols


def _html_block(b: Block) -> str:
    if isinstance(b, Text):
        return f'<p class="{_e(b.kind)}">{_e(b.text)}</p>'
    if isinstance(b, Table):
        num = _numeric_cols(b)
        head = "".join(f'<th class="{"num" if j in num else ""}">{_e(h)}</th>'
                       for j, h in enumerate(b.headers))
        body = []
        for i, r in enumerate(b.rows):
            cls = b.row_classes[i] if b.row_classes and i < len(b.row_classes) else ""
            cells = "".join(f'<td class="{"num" if j in num else ""}">{_e(c)}</td>' for j, c in enumerate(r))
            body.append(f'<tr class="{_e(cls)}">{cells}</tr>')
        cap = f'<div class="caption">{_e(b.caption)}</div>' if b.caption else ""
        return (f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead>'
                f'<tbody>{"".join(body)}</tbody></table></div>{cap}')
    if isinstance(b, Figure):
        style = f' style="max-width:{int(b.max_width)}px"' if b.max_width else ""
        cap = f"<figcaption>{_e(b.caption)}</figcaption>" if b.caption else ""
        return (f'<figure{style}><img src="{b.asset.data_uri()}" alt="{_e(b.alt or b.caption)}" '
                f'loading="eager">{cap}</figure>')
    if isinstance(b, Gallery):
        cards = []
        for c in b.cards:
            imgs = "".join(
                f'<div><img src="{a.data_uri()}" alt="{_e(label or c.title)}">'
                f'{f"<div class=il>{_e(label)}</div>" if label else ""}</div>' for a, label in c.images)
            lines = "".join(f'<div class="ln">{_e(ln)}</div>' for ln in c.lines)
            title = f'<div class="t">{_e(c.title)}</div>' if c.title else ""
            foot = f'<div class="ft">{_e(c.foot)}</div>' if c.foot else ""
            cards.append(f'<div class="card {_e(c.kind)}"><div class="imgs">{imgs}</div>{title}{lines}{foot}</div>')
        return (f'<div class="gallery" style="grid-template-columns:repeat(auto-fill,minmax('
                f'{int(b.min_width)}px,1fr))">{"".join(cards)}</div>')
    if isinstance(b, Tiles):
        return '<div class="tiles">' + "".join(
            f'<div class="tile"><div class="l">{_e(l)}</div><div class="v">{_e(v)}</div>'
            f'<div class="s">{_e(s)}</div></div>' for l, v, s in b.items) + "</div>"
    if isinstance(b, Bars):
        top = max((v for _, v, _ in b.items), default=0.0) or 1.0
        rows = "".join(f'<div>{_e(l)}</div><div><div class="bar" style="width:{100.0 * max(v, 0) / top:.1f}%">'
                       f'</div></div><div class="num">{_e(t)}</div>' for l, v, t in b.items)
        return f'<div class="bars">{rows}</div>'
    if isinstance(b, _point_map()):
        from pipeline.report import pointmap

        return pointmap.to_html(b)
    if isinstance(b, Details):
        inner = "".join(_html_block(x) for x in b.blocks)
        return f"<details><summary>{_e(b.summary)}</summary>{inner}</details>"
    raise TypeError(f"unknown report block {type(b).__name__}")


def to_html(doc: Document) -> str:
    """The whole page as one string: inline CSS, inline images, two small inline scripts."""
    nav = "".join(f'<a href="#{_e(s.id)}" class="{"" if s.status == "ok" else "off"}">{_e(s.title)}</a>'
                  for s in doc.sections)
    parts = []
    for s in doc.sections:
        badge = "" if s.status == "ok" else f'<span class="badge">{_e(s.status)}</span>'
        body = "".join(_html_block(b) for b in s.blocks)
        note = f'<p class="note">{_e(s.note)}</p>' if s.note else ""
        cls = "" if s.status == "ok" else "off"
        parts.append(f'<section id="{_e(s.id)}" class="{cls}"><h2>{_e(s.title)}{badge}</h2>{note}{body}</section>')
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(doc.title)}</title><script>{_HEAD_SCRIPT}</script><style>{_CSS}</style></head>\n"
        f'<body><header class="top"><h1>{_e(doc.title)}</h1><div class="sub">{_e(doc.subtitle)}</div></header>'
        f"<nav>{nav}</nav><main>\n" + "\n".join(parts) +
        "\n<footer>Written by the report stage; self-contained, nothing is loaded from the network.</footer>"
        f"</main><script>{_TAIL_SCRIPT}</script></body></html>\n")


# --- Markdown ------------------------------------------------------------------------------------

_MD_ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")
_MD_PUNCT = re.compile(r"([\\\[\]])")


def md_text(text: object) -> str:
    """Text from the data made inert in Markdown: no raw HTML (``<`` and ``>`` as entities, an
    entity-like ``&`` escaped), no links (``[ ] \\`` backslashed), one line. Emphasis marks are
    left alone: they make no element that can act, and escaping them would clutter every
    ``efficientnet_lite0`` in the raw file."""
    t = visible(text)
    t = _MD_ENTITY.sub(lambda m: "&amp;" + m.group(0)[1:], t)
    t = t.replace("<", "&lt;").replace(">", "&gt;")
    t = _MD_PUNCT.sub(r"\\\1", t)
    return " ".join(t.splitlines()) if ("\n" in t or "\r" in t) else t


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
