"""The layout's rules, read from the import graph (as import-linter contracts do) and line counts.

- One direction of dependency: ``stages`` -> ``pipeline.<topic>`` -> the engine. Nothing under
  ``pipeline`` imports ``stages`` (the graph finds stages by name, `pipeline.graph.load_graph`).
- The report package is the report stage's: only ``stages.report`` (and the package itself)
  imports ``pipeline.report``.
- No import cycles among the modules of ``pipeline`` and ``stages`` (imports inside functions
  count: a lazy import is still a dependency).
- No module over `LINE_BUDGET` lines, but for `OVERSIZE`: today's debt, each entry capped at its
  size when listed, so the list can only shrink (an entry that fits the budget must leave it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")
LINE_BUDGET = 300

# Module -> the line count it may not exceed until it is split (see issue 24).
OVERSIZE = {
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports, anywhere in the file (``from a import b`` counts a.b
    when that is a module, else a)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import pipeline.report.document` -> that module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {n: _imports(n, p, set(mods)) for n, p in mods.items()}


def _in(mod: str, pkg: str) -> bool:
    return mod == pkg or mod.startswith(pkg + ".")


def test_nothing_in_pipeline_imports_stages(graph):
    bad = sorted(f"{m} imports {t}" for m, ts in graph.items() if _in(m, "pipeline")
                 for t in ts if _in(t, "stages"))
    assert not bad, "pipeline/ must not import stages/ (move what it needs into its topic package):\n" + "\n".join(bad)


def test_only_the_report_stage_imports_the_report_package(graph):
    bad = sorted(f"{m} imports {t}" for m, ts in graph.items()
                 if not _in(m, "pipeline.report") and m != "stages.report"
                 for t in ts if _in(t, "pipeline.report"))
    assert not bad, ("pipeline.report is the report stage's; read a stage's output through its topic "
                     "package instead:\n" + "\n".join(bad))


def test_no_import_cycles(graph):
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if _in(t, m):
                continue  # a package's __init__ importing its own submodule is not a cycle
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_modules_fit_the_line_budget():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _modules().values()}
    over = sorted(f"{f}: {n} lines (budget {LINE_BUDGET})" for f, n in sizes.items()
                  if n > OVERSIZE.get(f, LINE_BUDGET))
    assert not over, "split these along their seams (or, for a listed one, do not grow it):\n" + "\n".join(over)
    paid = sorted(f for f in OVERSIZE if sizes.get(f, 0) <= LINE_BUDGET)
    assert not paid, f"these fit the budget now: remove them from OVERSIZE: {paid}"


def test_the_rules_see_real_imports(graph):
    """The walker resolves lazy, relative and ``from package import module`` imports."""
    assert "pipeline.graph" in graph["pipeline.runner"] or "pipeline.graph" in graph["pipeline.cli"]
    assert "pipeline.report.writer" in graph["stages.report"]   # `from pipeline.report import writer`
    assert any(_in(t, "pipeline") for t in graph["stages.heads"])


def test_the_mlp_config_takes_its_defaults_from_the_params():
    """One home per default: `MLPConfig` (the compiled fit's key) mirrors ``heads.mlp`` without a
    second set of values, so a changed default in params reaches a fit built with no arguments."""
    import dataclasses

    from pipeline.heads.mlp import MLPConfig
    from pipeline.heads.params import MLPParams

    fields = [f.name for f in dataclasses.fields(MLPConfig)]
    assert set(fields) == {f.name for f in dataclasses.fields(MLPParams)} - {"refit"}
    assert MLPConfig() == MLPConfig(**{n: getattr(MLPParams(), n) for n in fields})
