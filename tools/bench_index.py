"""List the benchmark scripts and check that docs/benchmarks.md names each one.

    python tools/bench_index.py

Prints one line per script in benchmarks/ (and tools/calibrate_doctor.py): its path and the first
line of its docstring. Exits 1, naming them, when a script is missing from docs/benchmarks.md:
that page is where each script's latest figures are recorded, with the command and load average.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def scripts() -> list[Path]:
    """Every benchmark script, in name order."""
    return sorted((ROOT / "benchmarks").glob("bench_*.py")) + [ROOT / "tools" / "calibrate_doctor.py"]


def summary(path: Path) -> str:
    """The first line of a script's module docstring ('' when it has none)."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def main() -> int:
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    missing = []
    for path in scripts():
        rel = str(path.relative_to(ROOT))
        print(f"{rel:38s} {summary(path)}")
        if rel not in page:
            missing.append(rel)
    if missing:
        print(f"\nnot in docs/benchmarks.md: {', '.join(missing)}; run them and record their figures there.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
