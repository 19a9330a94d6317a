"""Strings from the data (class and file names) made inert where they land: text and Markdown.

The report (HTML, inline JSON, Markdown) and the exported model card read these; terminal output
and CSV have theirs in `pipeline.errors` (`terminal_safe`).
"""

from __future__ import annotations

import re


def visible(text: object) -> str:
    """`text` with control characters (a terminal escape, a stray NUL) and the Unicode line
    separators shown as escapes (``\\x1b``): a name from the data reads the same everywhere,
    and a report printed in a terminal cannot drive it. Newlines and tabs stay."""
    t = str(text)
    if t.isprintable():
        return t
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in t)


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
