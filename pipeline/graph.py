"""The stage graph: which stages exist, their order, and the params schema they define."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from typing import Iterable, Iterator, Mapping, Sequence

from pipeline.errors import UserError
from pipeline.stage import Stage

# The product's stages, found by name as big_vision finds its evaluators: `stages.<name>.STAGE`.
DEFAULT_GRAPH = "stages"


class Graph:
    """Stages in dependency order, with the params sections they define and read."""

    def __init__(self, stages: Sequence[Stage]):
        by_name: dict[str, Stage] = {}
        for s in stages:
            if s.name in by_name:
                raise ValueError(f"two stages are named {s.name!r}")
            by_name[s.name] = s
        for s in stages:
            for d in s.deps:
                if d not in by_name:
                    raise ValueError(f"stage {s.name!r} depends on unknown stage {d!r}")
        self.stages: dict[str, Stage] = {s.name: s for s in _toposort(by_name)}
        self.schema: dict[str, type] = {}
        for s in self.stages.values():
            for section, cls in s.schemas.items():
                if section in self.schema and self.schema[section] is not cls:
                    raise ValueError(f"params section {section!r} is defined by two stages")
                self.schema[section] = cls
        for s in self.stages.values():
            for section in s.sections:
                if section not in self.schema:
                    raise ValueError(f"stage {s.name!r} reads params section {section!r}, which no stage defines")

    @property
    def names(self) -> list[str]:
        return list(self.stages)

    def upstream_closure(self, targets: Iterable[str]) -> list[str]:
        """The targets and every stage they (transitively) read from, in dependency order."""
        need: set[str] = set()
        stack = list(targets)
        while stack:
            n = stack.pop()
            if n in need:
                continue
            need.add(n)
            stack.extend(self.stages[n].deps)
        return [n for n in self.stages if n in need]

    def downstream(self, name: str) -> list[str]:
        """Stages that (transitively) read from `name`, in dependency order."""
        out: set[str] = set()
        for n, s in self.stages.items():
            if name in s.deps or out.intersection(s.deps):
                out.add(n)
        return [n for n in self.stages if n in out]

    def check_names(self, names: Iterable[str], what: str = "stage") -> None:
        import difflib

        for n in names:
            if n not in self.stages:
                near = difflib.get_close_matches(n, self.names, n=1)
                hint = f" Did you mean {near[0]}?" if near else ""
                raise UserError(f"unknown {what} {n!r}.{hint} Stages: {', '.join(self.names)}.")


def _toposort(by_name: Mapping[str, Stage]) -> list[Stage]:
    order: list[Stage] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(n: str, path: tuple[str, ...]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            raise ValueError(f"stage graph has a cycle: {' -> '.join(path + (n,))}")
        state[n] = 1
        for d in by_name[n].deps:
            visit(d, path + (n,))
        state[n] = 2
        order.append(by_name[n])

    for n in by_name:  # declaration order breaks ties, so the product's order is kept
        visit(n, ())
    return order


# Modules that stage modules import at their top but that deciding what is stale never uses.
# numpy alone is about half of the CPU time of `status` (it imports ~100 modules).
DEFERRED = ("numpy",)


class _Deferred(types.ModuleType):
    """A module whose code runs the first time one of its attributes is read.

    As `importlib.util.LazyLoader` does, but the attributes the import system reads when another
    module says ``import numpy`` (``__spec__``, ``__name__``) do not count as a use: Python 3.11's
    lazy module loads on that very read, so every ``import numpy`` of a stage module loaded it.
    """

    def __getattribute__(self, attr: str):
        if attr in ("__spec__", "__name__", "__class__", "__dict__"):
            return super().__getattribute__(attr)
        spec = super().__getattribute__("__spec__")
        self.__class__ = types.ModuleType   # from now on an ordinary module ...
        spec.loader.exec_module(self)       # ... whose code runs now, in this module object
        return getattr(self, attr)


@contextlib.contextmanager
def _deferred_imports() -> Iterator[None]:
    """While stage modules are imported, ``import numpy`` binds a module that loads on first use.

    Not safe to load from two threads at once, so whoever goes on to run stages calls
    `load_deferred` first, in the main thread.
    """
    for name in DEFERRED:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        module.__class__ = _Deferred
        sys.modules[name] = module
    yield


def load_deferred() -> None:
    """Finish loading the modules `load_graph(defer_imports=True)` left for later (idempotent)."""
    for name in DEFERRED:
        module = sys.modules.get(name)
        if isinstance(module, _Deferred):
            getattr(module, "__version__")  # the first use runs the module's code, once


def load_graph(module_name: str = DEFAULT_GRAPH, defer_imports: bool = False) -> Graph:
    """Import a graph module: a package whose ``STAGES`` lists stage module names or Stage objects.

    Importing must stay cheap (no jax): stage modules import heavy libraries inside `run`.

    Args:
      module_name: the graph package (``stages``, or a test's toy graph).
      defer_imports: load `DEFERRED` modules (numpy) only when first used, for commands that
        may only decide what is up to date (`status`, a no-op `run`); call `load_deferred`
        before running any stage.
    """
    with _deferred_imports() if defer_imports else contextlib.nullcontext():
        mod = importlib.import_module(module_name)
        stages = _stages_of(module_name, mod)
    return Graph(stages)


def _stages_of(module_name: str, mod) -> list[Stage]:
    items = getattr(mod, "STAGES", None)
    if items is None:
        raise UserError(f"graph module {module_name!r} has no STAGES list")
    stages = []
    for item in items:
        if isinstance(item, Stage):
            stages.append(item)
        else:
            sub = importlib.import_module(f"{module_name}.{item}" if "." not in item else item)
            stages.append(sub.STAGE)
    return stages


def draw(graph: Graph) -> str:
    """The stage graph as terminal text: one line per stage, arrows from what it reads."""
    lines = []
    width = max((len(n) for n in graph.names), default=0)
    for depth_name in graph.names:
        s = graph.stages[depth_name]
        depth = _depth(graph, depth_name)
        indent = "    " * depth
        arrow = "└─► " if s.deps else ""
        reads = f"  ◄ {', '.join(s.deps)}" if s.deps else ""
        sections = f"   params: {', '.join(s.sections) or '-'}"
        lines.append(f"{indent}{arrow}{s.name.ljust(width)}{reads}{sections}")
    return "\n".join(lines)


def _depth(graph: Graph, name: str) -> int:
    deps = graph.stages[name].deps
    return 0 if not deps else 1 + max(_depth(graph, d) for d in deps)
