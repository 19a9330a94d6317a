"""The report as data: sections of blocks. `pipeline.report.html_page` and
`pipeline.report.markdown` render it; `pipeline.report.writer` puts both on disk.

Sections are built from plain blocks (text, tables, figures, galleries, headline tiles, bars), so
each renderer is a small function per block and the page builders never write markup. Images are
`Asset`s: the HTML inlines them as base64 data URIs (the page works alone, offline, copied
anywhere); the Markdown twin links the same bytes written beside it under ``assets/``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Union

from pipeline.report.asset import ASSET_DIR, Asset  # noqa: F401 (part of this module's vocabulary)


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
