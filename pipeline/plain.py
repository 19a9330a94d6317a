"""Plain JSON values as the report, `show` and `compare` read them: load, flatten, compare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from pipeline.params import to_plain


def load_json(path: Path) -> Any | None:
    """Parsed JSON, or None when the file is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one dotted-key mapping (lists stay values)."""
    out: dict[str, Any] = {}
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = value
    return out


def canonical(v: Any) -> str:
    """A value as canonical JSON, so that a tuple and a list of the same items compare equal."""
    return json.dumps(to_plain(v), sort_keys=True)
