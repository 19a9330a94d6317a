"""A report block: an image of points where hovering a point names it (inline script only).

The page stays self-contained: the point positions (fractions of the image, from its top-left
corner) and labels travel as an inline JSON script element, and a small inline script finds the
point nearest the mouse (within 10 CSS pixels) and shows its label in a tooltip. The label of the
point last hovered is also written to the figure's ``data-hover`` attribute, which the browser
test reads back.
"""

from __future__ import annotations

import dataclasses
import html
import json
from typing import Sequence

from pipeline.report.asset import Asset
from pipeline.inert import md_text, visible


@dataclasses.dataclass
class PointMap:
    """An image with hoverable points.

    Attributes:
      asset: the PNG.
      positions: (x, y) per point, fractions of the image's width and height from its top-left.
      labels: text per point (what the tooltip shows).
      caption, alt: as for a Figure.
      id: unique in the page (names the data element).
    """

    asset: Asset
    positions: Sequence[Sequence[float]]
    labels: Sequence[str]
    caption: str = ""
    alt: str = ""
    id: str = "pointmap"


_SCRIPT = """
(function () {
  var fig = document.getElementById('%(id)s');
  var data = JSON.parse(document.getElementById('%(id)s-data').textContent);
  var img = fig.querySelector('img'), tip = fig.querySelector('.pm-tip');
  function nearest(e) {
    var r = img.getBoundingClientRect(), best = -1, bestD = 100;  // 10 px, squared
    for (var i = 0; i < data.pos.length; i++) {
      var dx = data.pos[i][0] * r.width - (e.clientX - r.left), dy = data.pos[i][1] * r.height - (e.clientY - r.top);
      var d = dx * dx + dy * dy;
      if (d < bestD) { bestD = d; best = i; }
    }
    return best;
  }
  img.addEventListener('mousemove', function (e) {
    var i = nearest(e);
    if (i < 0) { tip.style.display = 'none'; img.style.cursor = ''; return; }
    tip.textContent = data.labels[i];
    var r = img.getBoundingClientRect();
    tip.style.left = (e.clientX - r.left + 14) + 'px';
    tip.style.top = (e.clientY - r.top + 10) + 'px';
    tip.style.display = 'block';
    img.style.cursor = 'crosshair';
    fig.dataset.hover = data.labels[i];
  });
  img.addEventListener('mouseleave', function () { tip.style.display = 'none'; });
})();
"""


# Characters that could end or change an inline <script> element ("</script>", "<!--" which
# switches the HTML parser into its script-data-escaped state, "&"), and the two line separators
# that older JavaScript parsers read as line ends: JSON's \\u escapes keep them inert.
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def inline_json(value: object) -> str:
    """JSON safe to place inside ``<script type="application/json">``: parses to `value`."""
    text = json.dumps(value, ensure_ascii=False)
    return "".join(_JSON_ESCAPES.get(c, c) for c in text)


def to_html(b: PointMap) -> str:
    """The figure, its data and its script."""
    e = lambda t: html.escape(str(t), quote=True)  # noqa: E731
    data = inline_json({"pos": [[round(float(x), 5), round(float(y), 5)] for x, y in b.positions],
                        "labels": [visible(s) for s in b.labels]})
    cap = f"<figcaption>{e(b.caption)}</figcaption>" if b.caption else ""
    return (f'<figure class="pointmap" id="{e(b.id)}"><div style="position:relative;display:inline-block;'
            f'max-width:100%"><img src="{b.asset.data_uri()}" alt="{e(b.alt or b.caption)}" loading="eager">'
            '<div class="pm-tip" style="display:none;position:absolute;pointer-events:none;background:#101828;'
            'color:#fff;font-size:12px;padding:4px 8px;border-radius:4px;white-space:nowrap;z-index:3"></div>'
            f'</div>{cap}</figure><script type="application/json" id="{e(b.id)}-data">{data}</script>'
            f"<script>{_SCRIPT % {'id': b.id}}</script>")


def to_markdown(b: PointMap) -> str:
    """The image alone (hovering needs the HTML page)."""
    alt = md_text(b.alt or b.caption).replace("|", "\\|")
    return f"![{alt}]({b.asset.name})" + (f"\n\n_{md_text(b.caption)} (hover the points in report.html)_" if b.caption else "")
