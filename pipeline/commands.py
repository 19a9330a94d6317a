"""What each `python -m pipeline` command does, given its parsed flags (`pipeline.cli` parses).

Each ``cmd_<name>(args)`` returns the exit status; heavy modules are imported inside the command
that needs them, so `status` and a no-op `run` never import numpy or jax.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.errors import UserError
from pipeline.graph import draw, load_graph

DEFAULT_PARAMS = Path("params.yaml")


def _params_files(args: argparse.Namespace) -> list[Path]:
    if args.params_files:
        return list(args.params_files)
    return [DEFAULT_PARAMS] if DEFAULT_PARAMS.exists() else []


def _resolve(args: argparse.Namespace, defer_imports: bool = False):
    from pipeline import planner

    graph = load_graph(args.graph, defer_imports=defer_imports)
    files = _params_files(args)
    params = planner.resolve_params(graph, files, args.overrides)
    return graph, files, params


def cmd_status(args: argparse.Namespace) -> int:
    from pipeline import planner

    graph, _, params = _resolve(args, defer_imports=True)  # deciding what is stale needs no numpy
    plans = planner.plan(graph, params, args.cache_dir, verify=args.verify)
    if args.json:
        print(json.dumps({"stages": [
            {"name": p.name, "key": p.key, "up_to_date": p.up_to_date, "out": str(p.out),
             "state": p.state, "reasons": p.reasons} for p in plans.values()]}, indent=2))
        return 0
    width = max((len(n) for n in plans), default=0)
    for p in plans.values():
        mark = "✓" if p.up_to_date else ("·" if p.state == "missing" else "✗")
        print(f"{mark} {p.name.ljust(width)}  {p.key}  {p.describe()}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import time

    from pipeline import distributed, lock, planner, runner, storage
    from pipeline.progress import QuietReporter, RichReporter

    graph, files, params = _resolve(args, defer_imports=True)  # runner.execute loads what it defers
    targets = graph.names if args.targets in (["all"], []) else args.targets
    graph.check_names(targets)
    graph.check_names(args.force, what="stage for --force")
    cfg = distributed.launch_config(args.coordinator, args.num_processes, args.process_id,
                                    args.cpu_devices)
    plans = planner.plan(graph, params, args.cache_dir, verify=args.verify)
    todo = [n for n in graph.upstream_closure(targets)
            if not plans[n].up_to_date or n in args.force]
    if args.dry_run:
        for n in graph.upstream_closure(targets):
            p = plans[n]
            state = "would run" if n in todo else "up to date"
            print(f"{n}: {state} [{p.key}]" + (f" ({'; '.join(p.reasons)})" if p.reasons else ""))
        return 0
    if not todo and cfg.mode == "single":
        if not storage.is_remote(args.cache_dir) and args.cache_dir.is_dir():
            # A run killed after its last publish never recorded itself: this one does.
            runner.record_latest(args.cache_dir, plans, files, args.overrides)
        for n in graph.upstream_closure(targets):
            print(f"{n:<12} reused  [{plans[n].key}]")
        return 0
    _use_compile_cache(args)
    coord = distributed.start(cfg)
    if not storage.is_remote(args.cache_dir):
        args.cache_dir.mkdir(parents=True, exist_ok=True)   # an object store has no folders
    command = "python -m pipeline " + " ".join(sys.argv[1:])
    t0 = time.perf_counter()
    # Only process 0 holds the lock and writes; the others write their own shards inside it.
    held = lock.run_lock(args.cache_dir, command) if coord.is_leader else None
    if held is not None:
        try:
            held.acquire()
        except Exception as e:
            coord.fail(str(e))
            raise
    reporter = RichReporter() if coord.is_leader else QuietReporter()
    try:
        if held is not None and held.took_over:
            reporter.log(f"took over a stale lock left by {held.took_over.describe()} (no longer running)")
        results = runner.execute(graph, params, args.cache_dir, targets, reporter,
                                 force=args.force, coordinator=coord, local_dir=args.local_dir,
                                 verify=args.verify)
    finally:
        if isinstance(reporter, RichReporter):
            reporter.close()
        if coord.is_leader:
            runner.record_latest(args.cache_dir, planner.plan(graph, params, args.cache_dir),
                                 files, args.overrides)
        if held is not None:
            held.release()
    if not coord.is_leader:
        return 0
    for r in results:
        summary = ""
        if r.summary:
            summary = "  " + ", ".join(f"{k}={_fmt(v)}" for k, v in list(r.summary.items())[:6]
                                       if not isinstance(v, (dict, list)))
        print(f"{r.name:<12} {r.action:<7} {r.seconds:7.1f}s  [{r.key}]{summary}")
    print(f"done in {time.perf_counter() - t0:.1f}s; outputs under {args.cache_dir}")
    return 0


def _use_compile_cache(args: argparse.Namespace) -> None:
    """Keep XLA programs on this host's disk so reruns skip compiling (seconds each on a CPU).

    Set through the environment, which jax reads when a stage first imports it; deciding what is
    stale stays free of jax. A user's own JAX_COMPILATION_CACHE_DIR wins.
    """
    import os

    from pipeline import storage

    local = storage.default_local_dir() if storage.is_remote(args.cache_dir) else args.cache_dir
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(local).resolve() / "jax"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def cmd_dag(args: argparse.Namespace) -> int:
    print(draw(load_graph(args.graph)))
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    import yaml

    from pipeline.params import to_plain

    _, _, params = _resolve(args)
    if args.commented:
        from pipeline.params import dump_commented

        print(dump_commented(params), end="")
        return 0
    print(yaml.safe_dump(to_plain(params), sort_keys=False), end="")
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from pipeline.models import registry

    from pipeline import storage

    # With a gs:// cache, converted weights live in this host's local folder (ctx.cache_dir).
    weights_root = storage.default_local_dir() if storage.is_remote(args.cache_dir) else args.cache_dir
    rows = []
    for r in registry.describe(weights_root):
        weights = "converted" if r.get("converted_cached") else (
            "downloaded" if r.get("weights_cached") else "not yet")
        rows.append({
            "name": r["name"], "input": f"{r['input_size']} (resize {r['resize_size']})",
            "features": r["feature_dim"], "params": f"{r['params'] / 1e6:.1f}M" if r.get("params") else "",
            "GFLOPs": f"{r['flops'] / 1e9:.2f}" if r.get("flops") else "",
            "preprocessing": r["normalization"], "weights in cache": weights,
            "licence": r["licence"].split(" (")[0],
        })
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r[k]).ljust(widths[k]) for k in keys))
    print(f"weights cache: {args.cache_dir}/weights (downloaded once per machine, checksummed)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from pipeline import show

    print(show.show_latest(args.cache_dir, load_graph(args.graph)))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pipeline import show

    print(show.compare(args, _resolve))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pipeline.predict import command

    if args.top_k < 0 or args.batch_size < 1:
        raise UserError("--top-k must be >= 0 and --batch-size >= 1.")
    _use_compile_cache(args)  # before jax is imported: a second predict skips compiling
    return command.predict(args, _resolve)


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.predict import command

    _use_compile_cache(args)
    return command.export(args, _resolve)
