"""Finding a run's outputs and reading its metrics and params, for `show`, `compare` and `predict`.

A run is identified by its stages' cache keys: the latest `run` records them in
``<cache>/runs/latest.json``; a heads key (or a unique prefix) names the chain of outputs behind it.
Metrics come through the readers the HTML report uses (`pipeline.finetune.artifact.read_with_finetune`
for the heads), so they agree.
No jax or tensorflow here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline import cache, folders, publish, storage
from pipeline.errors import UserError
from pipeline.finetune.artifact import read_with_finetune
from pipeline.gradients import attack_artifact, ideal_artifact
from pipeline.graph import Graph, load_graph
from pipeline.plain import flatten

HEAD_METRICS = ("accuracy", "mean_per_class_accuracy", "log_loss")
ADV_METRICS = ("success_rate", "mean_target_prob", "mean_linf", "mean_l2", "mean_psnr")
IDEAL_METRICS = ("mean_prob", "min_prob", "mean_tv")


# --- finding runs --------------------------------------------------------------------------------

def read_latest(cache_dir: Path) -> dict:
    """``<cache>/runs/latest.json`` or a UserError that says how to make one."""
    path = storage.join(cache_dir, "runs", "latest.json")
    try:
        latest = json.loads(storage.read_text(path)) if storage.is_file(path) else None
    except ValueError:
        latest = None
    if not isinstance(latest, Mapping) or not isinstance(latest.get("stages"), Mapping):
        raise UserError(f"no run recorded in {path}: run `python -m pipeline run all` first "
                        f"(or pass the --cache-dir the run used).")
    return dict(latest)


def _out(cache_dir: Path, stage: str, key: str | None) -> Path | None:
    # A local folder to read: the output itself, or (gs:// cache) its verified local copy.
    if key and cache.is_complete(cache_dir, stage, key):
        return publish.local_copy(cache_dir, stage, key, storage.default_local_dir())
    return None


def _manifest(cache_dir: Any, stage: str, key: str | None) -> dict | None:
    """A stage output's manifest, read in place (no download of the output on a gs:// cache)."""
    if not key or not cache.is_complete(cache_dir, stage, key):
        return None
    return cache.read_manifest(cache.output_dir(cache_dir, stage, key))


def find_key(cache_dir: Path, stage: str, prefix: str) -> str:
    """The complete output of `stage` whose key starts with `prefix` (it must be unique)."""
    base = storage.join(cache_dir, stage)
    keys = sorted(k for k in folders.list_dirs(base) if cache.is_complete(cache_dir, stage, k))
    hits = [k for k in keys if k.startswith(prefix)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        known = ", ".join(k[:10] for k in keys[:8]) or "none"
        raise UserError(f"no complete {stage} output in {base} has a key starting with {prefix!r} "
                        f"(known: {known}). `python -m pipeline show` prints the latest run's keys.")
    raise UserError(f"{prefix!r} matches {len(hits)} {stage} outputs ({', '.join(h[:12] for h in hits)}); "
                    f"give more characters of the key.")


def chain_from_heads(cache_dir: Path, heads_key: str, graph: Graph | None = None) -> dict[str, str]:
    """Stage keys of the run built on a heads output: of each stage of `graph` (default: the
    product's) that reads it directly, the newest complete output, and every output these and the
    heads output read (the manifests' upstream keys, transitively)."""
    keys: dict[str, str] = {}
    todo = [("heads", heads_key)]
    for stage in (graph or load_graph()).downstream("heads"):
        for m in cache.iter_manifests(cache_dir, stage):  # newest first
            if (m.get("upstream") or {}).get("heads") == heads_key:
                todo.append((stage, m["key"]))
                break
    while todo:
        stage, key = todo.pop()
        m = _manifest(cache_dir, stage, key)
        if stage in keys or (m is None and stage != "heads"):
            continue  # a part-read token (finetune's stub part) names no output
        keys[stage] = key
        upstream = dict((m or {}).get("upstream") or {})
        # A fanned-out dep (several backbones): its upstream key hashes the parts; the first part
        # is the first backbone's output (what ctx.inputs[dep] was), and names the run before it.
        upstream.update({d: parts[0] for d, parts in ((m or {}).get("upstream_parts") or {}).items() if parts})
        todo += [(d, k) for d, k in upstream.items() if isinstance(k, str)]
    return keys


# --- what a run measured -------------------------------------------------------------------------

def run_metrics(cache_dir: Path, keys: Mapping[str, str]) -> dict[str, Any]:
    """Flat metrics of a run: ``heads/<head>/<split>/<metric>``, ``adversarial/<method>/<metric>``,
    ``adversarial/transfer/<backbone>/<method>``, ``ideal/<recipe>/<metric>``."""
    out: dict[str, Any] = {}
    heads = read_with_finetune(_out(cache_dir, "heads", keys.get("heads")),
                               _out(cache_dir, "finetune", keys.get("finetune")))
    for name, h in (heads.heads if heads else {}).items():
        for split, m in h.splits.items():
            for metric in HEAD_METRICS:
                if metric in m:
                    out[f"heads/{name}/{split}/{metric}"] = m[metric]
    adv = attack_artifact.read(_out(cache_dir, "adversarial", keys.get("adversarial")))
    for method, mm in (adv.methods if adv is not None else {}).items():
        for k in ADV_METRICS:
            if (v := getattr(mm, k)) is not None:
                out[f"adversarial/{method}/{k}"] = v
    for backbone, row in (adv.transfer if adv is not None else {}).items():
        for method, v in row.items():
            out[f"adversarial/transfer/{backbone}/{method}"] = v
    ideal = ideal_artifact.read(_out(cache_dir, "ideal", keys.get("ideal")))
    for recipe, r in (ideal.recipes if ideal is not None else {}).items():
        for k in IDEAL_METRICS:
            out[f"ideal/{recipe}/{k}"] = getattr(r, k)
        for backbone, t in r.transfer.items():
            out[f"ideal/{recipe}/transfer/{backbone}/top5_rate"] = t.top5_rate
    return out


def run_params(cache_dir: Path, keys: Mapping[str, str], order: Sequence[str] | None = None) -> dict[str, Any]:
    """Flat params (``section.key``) the run's stages were computed with, from their manifests.

    Args:
      keys: stage -> key.
      order: the stages in the graph's order (`pipeline.graph.Graph.names`); a section two stages
        recorded is taken from the first. None: the order of `keys`.
    """
    out: dict[str, Any] = {}
    for stage in [s for s in order if s in keys] if order is not None else keys:
        m = _manifest(cache_dir, stage, keys.get(stage))
        for section, values in ((m or {}).get("params") or {}).items():
            for k, v in flatten(values, section).items():
                out.setdefault(k, v)
    return out


