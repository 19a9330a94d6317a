"""`show` and `compare`: a run's headline metrics in the terminal, and two runs side by side.

`show` reads the keys of the latest `run` (`pipeline.results.read_latest`); `compare` takes a heads
key (or a unique prefix, or ``latest``) for each side, or resolves the other side from ``-S``
overrides the way `run` would. No jax or tensorflow here.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline import cache
from pipeline.errors import UserError
from pipeline.finetune.artifact import read_with_finetune
from pipeline.graph import DEFAULT_GRAPH, Graph, load_graph
from pipeline.plain import canonical
from pipeline.results import _manifest, _out, chain_from_heads, find_key, read_latest, run_metrics, run_params


# --- plain text tables -----------------------------------------------------------------------------

def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Rows as aligned text columns (numbers right-aligned), with a rule under the header."""
    widths = [max(len(str(h)), *(len(str(r[j])) for r in rows)) if rows else len(str(h))
              for j, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if j in right else str(c).ljust(w)
                         for j, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _ci(interval: Any) -> str:
    """`` [lo, hi]`` of a bootstrap 95% interval, or nothing where the metrics have none."""
    if not (isinstance(interval, (list, tuple)) and len(interval) == 2):
        return ""
    return f" [{interval[0]:.4f}, {interval[1]:.4f}]"


def _fmt(name: str, v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool) or isinstance(v, str):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _delta(a: Any, b: Any) -> str:
    if isinstance(a, bool) or isinstance(b, bool):
        return "" if a == b else "changed"
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        d = b - a
        return "0" if d == 0 else f"{d:+.4f}" if isinstance(d, float) else f"{d:+d}"
    return "" if a == b else ("new" if a is None else "removed" if b is None else "changed")


# --- show ----------------------------------------------------------------------------------------

def show_latest(cache_dir: Path, graph: Graph | None = None) -> str:
    """The latest run's headline metrics as text tables.

    Args:
      cache_dir: the cache root the run used.
      graph: the stage graph, whose order the stages are listed in (default: the product's).

    Returns:
      Text: when and how the run was made, each stage's key and state, a table of every head's
      accuracy, mean per-class accuracy and log loss per split, the attack's metrics, and where
      the HTML report is.

    Raises:
      UserError: no run was recorded in this cache.
    """
    latest = read_latest(cache_dir)
    # latest.json is written with sorted keys; show the stages in the graph's order.
    order = (graph or load_graph()).names
    stages = dict(sorted(latest["stages"].items(),
                         key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    how = " ".join([*(f"--params {p}" for p in latest.get("params_files", [])),
                    *(f"-S {o}" for o in latest.get("overrides", []))]) or "defaults"
    lines = [f"latest run: {latest.get('time', '?')}  ({how})", ""]
    rows = []
    for name, s in stages.items():
        done = s.get("complete") and cache.is_complete(cache_dir, name, s.get("key", ""))
        m = _manifest(cache_dir, name, s.get("key", "")) if done else None
        secs = (m or {}).get("seconds")
        rows.append([name, s.get("key", "?"), "done" if done else "not run",
                     f"{secs:.1f}s" if isinstance(secs, (int, float)) else "-"])
    lines += [text_table(["stage", "key", "state", "time"], rows, right=[3]), ""]

    keys = {n: s.get("key") for n, s in stages.items()}
    heads = read_with_finetune(_out(cache_dir, "heads", keys.get("heads")),
                               _out(cache_dir, "finetune", keys.get("finetune")))
    if heads and heads.heads:
        rows = []
        for name, h in heads.heads.items():
            for split, m in h.splits.items():
                ci = m.get("ci95") or {}
                rows.append([name, split, _fmt("n", m.get("n")),
                             _fmt("accuracy", m.get("accuracy")) + _ci(ci.get("accuracy")),
                             _fmt("mpca", m.get("mean_per_class_accuracy")) + _ci(ci.get("mean_per_class_accuracy")),
                             _fmt("log_loss", m.get("log_loss"))])
        lines += [text_table(["head", "split", "n", "accuracy [95% CI]", "mean per-class acc. [95% CI]",
                              "log loss"], rows,
                             right=[2, 3, 4, 5]), ""]
    else:
        lines += ["heads: not run in the latest run; no metrics yet.", ""]
    grad = run_metrics(cache_dir, keys)
    for stage in ("adversarial", "ideal"):
        rows = [[k.removeprefix(f"{stage}/"), _fmt(k, v)] for k, v in grad.items() if k.startswith(f"{stage}/")]
        if rows:
            lines += [text_table([stage, "value"], rows, right=[1]), ""]
    report = _out(cache_dir, "report", keys.get("report"))
    if report is not None and (report / "report.html").is_file():
        lines.append(f"report: {report / 'report.html'}")
    return "\n".join(lines).rstrip()


# --- compare -------------------------------------------------------------------------------------

def _side(cache_dir: Path, ref: str, graph: Graph) -> tuple[str, dict[str, str]]:
    """('latest' or a heads key) -> (label, stage keys)."""
    if ref == "latest":
        stages = read_latest(cache_dir)["stages"]
        keys = {n: s["key"] for n, s in stages.items() if s.get("key")}
        if not _out(cache_dir, "heads", keys.get("heads")):
            raise UserError("the latest run has no complete heads output to compare; run "
                            "`python -m pipeline run heads` first.")
        return f"latest ({keys['heads'][:8]})", keys
    key = find_key(cache_dir, "heads", ref)
    return key[:8], chain_from_heads(cache_dir, key, graph)


def compare(args: argparse.Namespace, resolve: Callable[[argparse.Namespace], tuple]) -> str:
    """Two runs' metrics side by side with the change, then the params that differ.

    Args:
      args: the CLI's parsed `compare` arguments: ``a`` (heads key, unique prefix or ``latest``),
        ``b`` (another, or None: the run the ``-S`` / ``--params`` options describe), ``cache_dir``,
        ``graph`` (the graph module, whose stages' params are compared; default the product's).
      resolve: ``resolve(args) -> (graph, params files, params)`` (the CLI's own), used when ``b``
        is None.

    Returns:
      Text like ``dvc metrics diff``: one row per metric with both values and the change.

    Raises:
      UserError: a key matches nothing or several outputs, or the run given by params has no
        heads output yet.
    """
    cache_dir = args.cache_dir
    graph = load_graph(getattr(args, "graph", DEFAULT_GRAPH))
    label_a, keys_a = _side(cache_dir, args.a, graph)
    if args.b is not None:
        label_b, keys_b = _side(cache_dir, args.b, graph)
    else:
        from pipeline import planner

        graph, files, params = resolve(args)
        plans = planner.plan(graph, params, cache_dir)
        keys_b = {n: p.key for n, p in plans.items()}
        opts = " ".join([*(f"--params {f}" for f in files or []),
                         *(f"-S {o}" for o in getattr(args, "overrides", None) or [])])
        how = opts or "params.yaml"
        if "heads" not in keys_b or not _out(cache_dir, "heads", keys_b["heads"]):
            raise UserError(f"the run given by {how} has no heads output yet (heads key "
                            f"{keys_b.get('heads', '?')[:12]}); run `python -m pipeline run all {opts}`"
                            f" first, then compare.")
        label_b = f"{how} ({keys_b['heads'][:8]})"
    if keys_a.get("heads") == keys_b.get("heads"):
        note = f"Both sides use the same heads output ({keys_a['heads']}); head metrics are identical."
    else:
        note = ""
    ma, mb = run_metrics(cache_dir, keys_a), run_metrics(cache_dir, keys_b)
    rows = [[k, _fmt(k, ma.get(k)), _fmt(k, mb.get(k)), _delta(ma.get(k), mb.get(k))]
            for k in list(ma) + [k for k in mb if k not in ma]]
    out = [f"A: {label_a}    B: {label_b}"]
    if note:
        out.append(note)
    out += ["", text_table(["metric", "A", "B", "change"], rows, right=[1, 2, 3]) if rows else "no metrics on either side"]
    pa, pb = run_params(cache_dir, keys_a, graph.names), run_params(cache_dir, keys_b, graph.names)
    # Only params both runs have: a stage one side has not run (its report) is no difference.
    diff = [[k, _fmt(k, pa[k]), _fmt(k, pb[k])]
            for k in sorted(set(pa) & set(pb)) if canonical(pa[k]) != canonical(pb[k])]
    out.append("")
    out.append(text_table(["param", "A", "B"], diff) if diff else "params: identical")
    return "\n".join(out)
