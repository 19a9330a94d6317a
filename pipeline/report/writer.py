"""Putting a report `Document` on disk: the HTML page, the Markdown twin and the assets it links."""

from __future__ import annotations

from pathlib import Path

from pipeline.report.document import Document
from pipeline.report.html_page import to_html
from pipeline.report.markdown import to_markdown


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
