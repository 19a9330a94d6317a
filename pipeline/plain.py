"""Plain JSON values as the report, `show` and `compare` read them: load, flatten, compare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from pipeline.errors import damaged_output
from pipeline.params import to_plain

T = TypeVar("T")


def load_json(path: Path) -> Any | None:
    """Parsed JSON, or None when the file is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_output_json(path: Path, stage: str, parse: Callable[[Any], T]) -> T | None:
    """`parse` of a stage's JSON output file, or None when the file is absent.

    Raises:
      UserError: the file is there but `parse` cannot read it (not JSON, a key missing, a value of
        another type): it names the file, what is wrong and the fix (`errors.damaged_output`).
    """
    if not Path(path).is_file():
        return None
    try:
        return parse(json.loads(Path(path).read_text()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise damaged_output(path, stage, f"{type(e).__name__}: {e}") from None


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
