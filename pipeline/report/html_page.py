"""The report as one self-contained HTML page: every block rendered, images inlined as data URIs,
strings from the data escaped (`pipeline.inert.visible`, then HTML-escaped)."""

from __future__ import annotations

import html

from pipeline.inert import visible
from pipeline.report.document import (Bars, Block, Details, Document, Figure, Gallery, Table, Text, Tiles,
                                      _point_map)


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
