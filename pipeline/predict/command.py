"""The `predict` and `export` commands: the CLI's parsed arguments to the functions that do the work."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from pipeline.errors import terminal_safe
from pipeline.predict import resolve


def find_run(args: argparse.Namespace, resolve_params: Callable) -> tuple[resolve.RunRef, str]:
    """(run, ``report.primary_head``) from ``--run`` or the params options.

    Args:
      args: parsed CLI arguments (``run``, ``cache_dir``, ``overrides``, ``params_files``).
      resolve_params: the CLI's ``resolve(args) -> (graph, files, params)``.
    """
    graph, files, params = resolve_params(args)
    report = params.get("report")
    primary = getattr(report, "primary_head", "auto") if report is not None else "auto"
    if args.run:
        key = resolve.heads_key_from_ref(args.cache_dir, args.run)
    else:
        key = resolve.heads_key_from_params(args.cache_dir, graph, params, files, args.overrides)
    return resolve.load_run(args.cache_dir, key), primary


def predict(args: argparse.Namespace, resolve_params: Callable) -> int:
    """`python -m pipeline predict`: print (or write) one row per photo; 1 if none could be read."""
    from pipeline.predict import output
    from pipeline.predict.model import load_classifier
    from pipeline.predict.predict import predict_files

    run, primary = find_run(args, resolve_params)
    head = resolve.choose_head(run, args.head, primary)
    clf = load_classifier(run, head)
    reporter = None
    if sys.stderr.isatty() and not args.quiet:
        from pipeline.progress import RichReporter

        reporter = RichReporter()
    try:
        result = predict_files(clf, args.paths, batch_size=args.batch_size, reporter=reporter)
    finally:
        if reporter is not None:
            reporter.close()
    text = output.render(result, args.format, args.top_k)
    if args.out:
        Path(args.out).write_text(text + "\n", errors="backslashreplace")
        print(f"{len(result.predictions)} prediction(s) written to {args.out}"
              + (f"; {len(result.bad)} file(s) skipped" if result.bad else ""), file=sys.stderr)
    else:
        print(text)
    if result.bad and args.format != "table":
        for b in result.bad:
            print(terminal_safe(f"skipped {b.file}: {b.reason} ({b.kind})"), file=sys.stderr)
    return 0 if result.predictions or not result.bad else 1


def export(args: argparse.Namespace, resolve_params: Callable) -> int:
    """`python -m pipeline export`: write the self-contained classifier folder."""
    from pipeline.predict.export import export_classifier

    run, primary = find_run(args, resolve_params)
    head = resolve.choose_head(run, args.head, primary)
    written = export_classifier(run, head, Path(args.out), formats=args.formats or ["stablehlo"],
                                log=lambda m: print(m, file=sys.stderr), check=args.check,
                                force=args.force)
    for path in written:
        print(path)
    return 0
