"""`python -m pipeline ...`: parse flags, dispatch to `pipeline.commands`, turn errors into exit codes.

No logic lives here beyond wiring: what each command does is `pipeline.commands`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from pipeline import commands
from pipeline.errors import UserError, describe_os_error, is_expected_os_error, terminal_safe
from pipeline.graph import DEFAULT_GRAPH

DEFAULT_CACHE = Path("cache")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one param for this command, e.g. -S heads.seed=3 (repeatable; "
                        "the value is read as YAML)")
    p.add_argument("--params", dest="params_files", action="append", type=Path, default=None,
                   metavar="FILE", help="params file (default params.yaml); repeat to overlay files, "
                                        "later ones win")
    p.add_argument("--cache-dir", type=_path_or_url, default=DEFAULT_CACHE,
                   help="cache root: a folder (default ./cache) or a gs://bucket/folder URL")
    p.add_argument("--graph", default=DEFAULT_GRAPH, help=argparse.SUPPRESS)


def _path_or_url(text: str):
    from pipeline.storage import as_path

    return as_path(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Transfer learning with cached embeddings: data -> features -> heads -> "
                    "ideal / adversarial -> report. Reruns only what your params touch.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="bring stages up to date (and whatever they read from)")
    run.add_argument("targets", nargs="*", default=["all"], help="stage names, or 'all' (default)")
    run.add_argument("--force", action="append", default=[], metavar="STAGE",
                     help="rerun STAGE even when it is up to date (repeatable)")
    run.add_argument("--dry-run", action="store_true", help="say what would run, run nothing")
    run.add_argument("--verify", action="store_true",
                     help="check every reused output's content digests (reads every byte), not only "
                          "its sizes; a damaged output is rerun")
    dist = run.add_argument_group(
        "multi-process runs", "launch the same command on every host; on a Cloud TPU pod leave these "
                              "unset (auto-detected). Environment: PIPELINE_COORDINATOR, "
                              "PIPELINE_NUM_PROCESSES, PIPELINE_PROCESS_ID, PIPELINE_CPU_DEVICES.")
    dist.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    dist.add_argument("--num-processes", type=int, help="how many processes take part")
    dist.add_argument("--process-id", type=int, help="this process's index, 0 .. N-1")
    dist.add_argument("--cpu-devices", type=int,
                      help="virtual CPU devices per process (CPU-only hosts and tests)")
    run.add_argument("--local-dir", type=Path, default=None, metavar="DIR",
                     help="with a gs:// --cache-dir: this host's scratch folder for staging outputs, "
                          "local copies of inputs and weights (default $PIPELINE_LOCAL_DIR or "
                          "~/.cache/pipeline)")
    _add_common(run)

    status = sub.add_parser("status", help="up to date, stale (and why) or missing, per stage")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--verify", action="store_true",
                        help="check every output's content digests (reads every byte); without it "
                             "only file sizes are checked")
    _add_common(status)

    dag = sub.add_parser("dag", help="draw the stage graph")
    _add_common(dag)

    params = sub.add_parser("params", help="print the resolved, validated params")
    params.add_argument("--commented", action="store_true",
                        help="with each key's help as a comment (how params.yaml is written)")
    _add_common(params)

    backbones = sub.add_parser("backbones", help="list backbones and what is cached locally")
    backbones.add_argument("--cache-dir", type=_path_or_url, default=DEFAULT_CACHE)

    show = sub.add_parser("show", help="headline metrics of the latest run")
    show.add_argument("--cache-dir", type=_path_or_url, default=DEFAULT_CACHE)
    show.add_argument("--graph", default=DEFAULT_GRAPH, help=argparse.SUPPRESS)

    compare = sub.add_parser("compare", help="two runs' metrics side by side (heads keys or params)")
    compare.add_argument("a", help="a heads key (or unique prefix), or 'latest'")
    compare.add_argument("b", nargs="?", default=None,
                         help="another heads key; or omit it and give -S overrides for the other run")
    _add_common(compare)

    _add_predict_parsers(sub)
    return parser


def _add_predict_parsers(sub: argparse._SubParsersAction) -> None:
    """`predict` and `export`: use the trained classifier of a run (logic in pipeline.predict)."""
    heads = "logreg, mlp, finetune or best (best by CV or val accuracy); default: the head the report calls primary"
    run_help = ("a heads key (or unique prefix, or 'latest') to use instead of the run the params "
                "options give")
    predict = sub.add_parser("predict", help="classify photos with a run's trained head")
    predict.add_argument("paths", nargs="+", metavar="PATH",
                         help="image files, folders (recursively) or globs ('photos/**/*.jpg')")
    predict.add_argument("--head", default=None, help=heads)
    predict.add_argument("--run", default=None, metavar="KEY", help=run_help)
    predict.add_argument("--top-k", type=int, default=3, help="classes listed after the top one (default 3)")
    predict.add_argument("--format", choices=("table", "json", "csv"), default="table")
    predict.add_argument("--out", type=Path, default=None, metavar="FILE",
                         help="write the rows here instead of printing them")
    predict.add_argument("--batch-size", type=int, default=32, help="images per backbone call")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(predict)

    export = sub.add_parser("export", help="write a self-contained classifier folder (model, labels, model card)")
    export.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder to write (built beside it, then renamed into place)")
    export.add_argument("--force", action="store_true",
                        help="replace --out whole when it already holds files")
    export.add_argument("--format", dest="formats", action="append", default=None,
                        choices=("stablehlo", "onnx", "tflite"),
                        help="model format (repeatable; default stablehlo). onnx and tflite need "
                             "pip install -e '.[export]'")
    export.add_argument("--head", default=None, help=heads)
    export.add_argument("--run", default=None, metavar="KEY", help=run_help)
    export.add_argument("--no-check", dest="check", action="store_false",
                        help="skip running each written model once against the jax classifier")
    _add_common(export)


COMMANDS = {"run": commands.cmd_run, "status": commands.cmd_status, "dag": commands.cmd_dag,
            "params": commands.cmd_params, "backbones": commands.cmd_backbones,
            "show": commands.cmd_show, "compare": commands.cmd_compare,
            "predict": commands.cmd_predict, "export": commands.cmd_export}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit status: 0 done, 2 a problem the user can fix (one sentence on
    stderr naming the file and the fix), 1 an unexpected failure (a sentence and the path of a
    log file holding the traceback), 130 interrupted."""
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "cache_dir", None) is not None:
            _check_cache_dir(args.cache_dir)
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"error: {terminal_safe(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished outputs are kept, a resumable stage continues where it stopped",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`... | head`): nothing to say, and nowhere to say it.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:
        if not is_expected_os_error(e):
            return _unexpected(e, args)
        print(f"error: {terminal_safe(describe_os_error(e))}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 -- a bug: one sentence here, the traceback in a file
        return _unexpected(e, args)


def _check_cache_dir(path: object) -> None:
    """A local --cache-dir that exists must be a folder (absent is fine: `run` creates it)."""
    import os
    import stat

    from pipeline import storage

    if storage.is_remote(path):
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise UserError(describe_os_error(e, "--cache-dir")) from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"--cache-dir {str(path)!r} is a file, not a folder; pass a folder (it is "
                        f"created if absent), e.g. --cache-dir cache.")


def _unexpected(exc: BaseException, args: argparse.Namespace) -> int:
    """Write the traceback to a log file and say where: a bug, not the user's doing."""
    import tempfile
    import time
    import traceback

    from pipeline import storage

    text = "".join(traceback.format_exception(exc))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    places = []
    root = getattr(args, "cache_dir", None)
    if root is not None and not storage.is_remote(root):
        places.append(Path(root) / "logs")
    places.append(Path(tempfile.gettempdir()) / "pipeline-logs")
    where = None
    for folder in places:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            where = folder / f"error-{stamp}-{args.command}.log"
            where.write_text(f"python -m pipeline {' '.join(sys.argv[1:])}\n\n{text}")
            break
        except OSError:
            where = None
    said = terminal_safe(f"{type(exc).__name__}: {exc}")
    tail = (f"the full traceback is in {where}; please include it in a bug report." if where
            else "the traceback could not be saved:\n" + text)
    print(f"error: {args.command} failed unexpectedly ({said}); {tail}", file=sys.stderr)
    return 1
