"""Run what must run: every stale stage of a plan (`pipeline.planner`), in dependency order.

Nothing here imports jax, flax or tensorflow: only a stage's own `run` pulls in the heavy
libraries.
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline import cache, publish, storage
from pipeline.errors import UserError
from pipeline.graph import Graph
from pipeline.params import to_plain
from pipeline.planner import StagePlan, plan
from pipeline.stage import Reporter, StageContext


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape outputs (read from metadata; imports nothing)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("jax", "jaxlib", "flax", "optax", "numpy", "scikit-learn", "tensorflow-cpu",
                 "tensorflow-datasets", "pillow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


@dataclasses.dataclass
class StageResult:
    name: str
    key: str
    action: str          # "ran", "reused", "failed"
    seconds: float
    summary: Mapping[str, Any] | None = None


def execute(graph: Graph, params: Mapping[str, Any], root: Any, targets: Sequence[str],
            reporter: Reporter, force: Sequence[str] = (), coordinator: Any = None,
            local_dir: Path | None = None, verify: bool = False) -> list[StageResult]:
    """Run the targets and whatever upstream stage is missing or stale, in dependency order.

    Args:
      graph: the stage graph.
      params: resolved params (all sections).
      root: cache root: a local folder, or a ``gs://`` URL (see `pipeline.cache` and `pipeline.publish`).
      targets: stage names to bring up to date (with their upstream closure).
      reporter: progress sink.
      force: stages to rerun even when up to date.
      coordinator: a `pipeline.distributed.Coordinator` for multi-process runs; None for one
        process. Process 0 decides what runs and publishes; every process runs the stages marked
        ``all_processes``; a failure anywhere stops every process with that failure's message.
      local_dir: for a remote root, this host's local scratch folder (staging folders, local
        copies of inputs, converted weights); default `pipeline.storage.default_local_dir()`.
        Ignored for a local root.
      verify: check every reused output's digests, not only its sizes (see `pipeline.planner.plan`).

    Returns:
      One result per stage in the closure, in order. A stage's exception propagates after its
      private output folder is discarded (or kept, for resumable stages, to resume from).
    """
    from pipeline.distributed import Coordinator, RemoteFailure
    from pipeline.graph import load_deferred

    load_deferred()  # here, in one thread, before a stage's threads could race to load numpy
    coord = coordinator or Coordinator()
    graph.check_names(targets)
    graph.check_names(force, what="stage for --force")
    remote = storage.is_remote(root)
    local_root = Path(local_dir or storage.default_local_dir()) if remote else Path(root)
    names = graph.upstream_closure(targets)
    plans = plan(graph, params, root, local_dir, verify)
    if coord.is_leader and not remote:
        _clean_leftovers(root, [n for n in names
                                if not (n in force and graph.stages[n].resumable)], plans)
    # Process 0's view of the cache is the one that counts; every process must agree on keys.
    decided = coord.broadcast("plan", {n: [plans[n].dep_key, [q.up_to_date and n not in force
                                                              for q in plans[n].each()]]
                                       for n in names})
    for n in names:
        if decided[n][0] != plans[n].dep_key:
            raise UserError(f"process {coord.process_index} computed key {plans[n].dep_key} for stage "
                            f"{n}, process 0 computed {decided[n][0]}: params files, overrides or "
                            f"code differ between hosts. Launch every host with the same command "
                            f"and checkout.")
    results: list[StageResult] = []
    for name in names:
        stage = graph.stages[name]
        for i, p in enumerate(plans[name].each()):
            if decided[name][1][i]:
                summary = cache.read_manifest(p.out).get("summary") if coord.is_leader else None
                results.append(StageResult(name, p.key, "reused", 0.0, summary))
                continue
            runs_here = stage.all_processes or coord.is_leader
            tag = name if not plans[name].parts else f"{name}.{i}"   # barrier names are unique
            # With several processes on a remote root, each one shares its files through the
            # remote partial folder, and process 0 gathers them before `finalize`.
            exchange = remote and coord.process_count > 1 and stage.all_processes
            if coord.is_leader:
                why = "; ".join(p.reasons) if p.reasons else "forced"
                reporter.log(f"▶ {name} [{p.key}] ({why})")
            if remote:
                work = publish.staging_dir(local_root, name, p.key, coord.process_index,
                                           coord.process_count)
                if runs_here:
                    publish.prepare_staging(work, stage.resumable)
                if coord.is_leader and exchange:
                    publish.discard_partial(root, name, p.key)   # last attempt's shares are stale
            elif coord.is_leader:
                work = publish.prepare_partial(root, name, p.key, stage.resumable)
            else:
                work = cache.partial_dir(root, name, p.key)
            coord.sync(f"{tag}/prepared")
            started = time.time()
            try:
                summary = None
                if runs_here:
                    parts = {d: tuple(publish.local_copy(root, d, q.key, local_root) for q in plans[d].each())
                             for d in stage.deps}
                    inputs = {d: folders[0] for d, folders in parts.items()}
                    ctx = StageContext(name=name, key=p.key, params=p.params, inputs=inputs,
                                       out_dir=work, cache_dir=local_root, reporter=reporter,
                                       process_index=coord.process_index,
                                       process_count=coord.process_count, input_parts=parts)
                    summary = stage.run(ctx)
                    if exchange and not coord.is_leader:
                        publish.share_partial(root, name, p.key, work)
                coord.sync(f"{tag}/ran")
                if coord.is_leader:
                    if exchange:
                        publish.gather_partial(root, name, p.key, work)
                    if stage.finalize is not None:
                        summary = stage.finalize(ctx)
                    ended = time.time()
                    publish.publish(root, name, p.key, {
                        "stage": name, "key": p.key, "version": stage.version,
                        "params": to_plain(p.params), "upstream": p.upstream,
                        # A fanned-out dep's upstream key hashes its parts; these are their keys.
                        "upstream_parts": {d: [q.key for q in plans[d].parts] for d in stage.deps
                                           if len(plans[d].parts) > 1},
                        "fingerprint": p.fingerprint, "versions": library_versions(),
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                        "ended": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ended)),
                        "seconds": round(ended - started, 3), "summary": summary,
                        "host": platform.node(), "process_count": coord.process_count,
                    }, staging=work if remote else None, local_root=local_root if remote else None)
                coord.sync(f"{tag}/published")
                if remote and runs_here and not coord.is_leader:
                    shutil.rmtree(work, ignore_errors=True)   # uploaded and published by process 0
            except BaseException as exc:
                if coord.process_count > 1 and not isinstance(exc, RemoteFailure):
                    coord.fail(f"{type(exc).__name__}: {exc}")
                if remote:
                    if runs_here and not stage.resumable:
                        shutil.rmtree(work, ignore_errors=True)
                    if coord.is_leader and exchange:
                        publish.discard_partial(root, name, p.key)
                elif coord.is_leader and not stage.resumable:
                    publish.discard_partial(root, name, p.key)
                results.append(StageResult(name, p.key, "failed", time.time() - started))
                raise
            results.append(StageResult(name, p.key, "ran", time.time() - started, summary))
    return results


def _clean_leftovers(root: Any, names: Sequence[str], plans: Mapping[str, StagePlan]) -> None:
    """Remove what a killed run left beside complete outputs (called under the run lock).

    A ``<key>.partial`` beside a complete ``<key>`` is a killed ``--force`` rerun's work (a
    resumable stage's partial of an incomplete output, or of one forced now, is kept: the run
    resumes from it); ``<key>.old-<pid>`` is an output a killed publish was replacing.
    """
    for name in names:
        for p in plans[name].each():
            out = Path(p.out)
            if cache.is_complete(root, name, p.key):
                shutil.rmtree(cache.partial_dir(root, name, p.key), ignore_errors=True)
            for old in out.parent.glob(f"{p.key}.old-*") if out.parent.is_dir() else ():
                shutil.rmtree(old, ignore_errors=True)


def record_latest(root: Any, plans: Mapping[str, StagePlan], params_files: Sequence[Path],
                  overrides: Sequence[str]) -> None:
    """Remember the keys of the latest run, for `show` and the report."""
    cache.write_json_atomic(storage.join(root, "runs", "latest.json"), {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "params_files": [str(p) for p in params_files], "overrides": list(overrides),
        "stages": {n: {"key": p.key, "complete": all(cache.is_complete(root, n, q.key) for q in p.each()),
                       **({"parts": [q.key for q in p.parts]} if p.parts else {})}
                   for n, p in plans.items()},
    })
