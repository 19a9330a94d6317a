"""`show` and `compare`: a run's headline metrics in the terminal, and two runs side by side.

A run is identified by its stages' cache keys: `show` reads the keys of the latest `run` from
``<cache>/runs/latest.json``; `compare` takes a heads key (or a unique prefix, or ``latest``) for
each side, or resolves the other side from ``-S`` overrides the way `run` would. Metrics come through
the readers the HTML report uses (`pipeline.heads.artifact`), so they agree. No jax or tensorflow here.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pipeline import cache, storage
from pipeline.errors import UserError
from pipeline.heads.artifact import read_heads_metrics
from pipeline.plain import canonical, flatten, load_json

STAGES = ("data", "features", "heads", "trunk", "finetune", "ideal", "adversarial", "report")
HEAD_METRICS = ("accuracy", "mean_per_class_accuracy", "log_loss")
ADV_METRICS = ("success_rate", "mean_target_prob", "mean_linf", "mean_l2", "mean_psnr")
IDEAL_METRICS = ("mean_prob", "min_prob", "mean_tv")


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
        return cache.local_copy(cache_dir, stage, key, storage.default_local_dir())
    return None


def _manifest(cache_dir: Any, stage: str, key: str | None) -> dict | None:
    """A stage output's manifest, read in place (no download of the output on a gs:// cache)."""
    if not key or not cache.is_complete(cache_dir, stage, key):
        return None
    return cache.read_manifest(cache.output_dir(cache_dir, stage, key))


def find_key(cache_dir: Path, stage: str, prefix: str) -> str:
    """The complete output of `stage` whose key starts with `prefix` (it must be unique)."""
    base = storage.join(cache_dir, stage)
    keys = sorted(k for k in storage.list_dirs(base) if cache.is_complete(cache_dir, stage, k))
    hits = [k for k in keys if k.startswith(prefix)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        known = ", ".join(k[:10] for k in keys[:8]) or "none"
        raise UserError(f"no complete {stage} output in {base} has a key starting with {prefix!r} "
                        f"(known: {known}). `python -m pipeline show` prints the latest run's keys.")
    raise UserError(f"{prefix!r} matches {len(hits)} {stage} outputs ({', '.join(h[:12] for h in hits)}); "
                    f"give more characters of the key.")


def chain_from_heads(cache_dir: Path, heads_key: str) -> dict[str, str]:
    """Stage keys of the run built on a heads output: its upstream chain (from the manifests) and
    the newest complete ideal / adversarial / report outputs that read it."""
    keys = {"heads": heads_key}
    m = _manifest(cache_dir, "heads", heads_key) or {}
    # Several backbones: the upstream key hashes the parts; the first part is the first
    # backbone's features output (what ctx.inputs["features"] was), and names the data run.
    parts = (m.get("upstream_parts") or {}).get("features") or []
    feats = parts[0] if parts else (m.get("upstream") or {}).get("features")
    if feats:
        keys["features"] = feats
        fm = _manifest(cache_dir, "features", feats) or {}
        if (data := (fm.get("upstream") or {}).get("data")):
            keys["data"] = data
    for stage in ("finetune", "ideal", "adversarial"):
        for dm in cache.iter_manifests(cache_dir, stage):  # newest first
            if (dm.get("upstream") or {}).get("heads") == heads_key:
                keys[stage] = dm["key"]
                break
    for rm in cache.iter_manifests(cache_dir, "report"):
        if (rm.get("upstream") or {}).get("heads") == heads_key:
            keys["report"] = rm["key"]
            break
    return keys


# --- what a run measured -------------------------------------------------------------------------

def run_metrics(cache_dir: Path, keys: Mapping[str, str]) -> dict[str, Any]:
    """Flat metrics of a run: ``heads/<head>/<split>/<metric>``, ``adversarial/<method>/<metric>``,
    ``adversarial/transfer/<backbone>/<method>``, ``ideal/<recipe>/<metric>``."""
    out: dict[str, Any] = {}
    heads = read_heads_metrics(_out(cache_dir, "heads", keys.get("heads")),
                                       _out(cache_dir, "finetune", keys.get("finetune")))
    for name, h in (heads or {}).get("heads", {}).items():
        for split, m in h["splits"].items():
            for metric in HEAD_METRICS:
                if metric in m:
                    out[f"heads/{name}/{split}/{metric}"] = m[metric]
    adv = _out(cache_dir, "adversarial", keys.get("adversarial"))
    raw = load_json(adv / "metrics.json") if adv is not None else None
    if isinstance(raw, Mapping) and isinstance(raw.get("methods"), Mapping):
        for method, mm in raw["methods"].items():
            for k in ADV_METRICS:
                if isinstance((mm or {}).get(k), (int, float)):
                    out[f"adversarial/{method}/{k}"] = mm[k]
        for backbone, row in (raw.get("transfer") or {}).items():
            for method, v in (row or {}).items():
                if isinstance(v, (int, float)):
                    out[f"adversarial/transfer/{backbone}/{method}"] = v
    elif isinstance(raw, Mapping):  # another layout: every number outside lists
        for k, v in flatten({k: v for k, v in raw.items() if not isinstance(v, list)}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"adversarial/{k.replace('.', '/')}"] = v
    ideal = _out(cache_dir, "ideal", keys.get("ideal"))
    raw = load_json(ideal / "ideal.json") if ideal is not None else None
    if isinstance(raw, Mapping) and isinstance(raw.get("recipes"), Mapping):
        for recipe, r in raw["recipes"].items():
            for k in IDEAL_METRICS:
                if isinstance((r or {}).get(k), (int, float)):
                    out[f"ideal/{recipe}/{k}"] = r[k]
            for backbone, t in ((r or {}).get("transfer") or {}).items():
                if isinstance((t or {}).get("top5_rate"), (int, float)):
                    out[f"ideal/{recipe}/transfer/{backbone}/top5_rate"] = t["top5_rate"]
    return out


def run_params(cache_dir: Path, keys: Mapping[str, str]) -> dict[str, Any]:
    """Flat params (``section.key``) the run's stages were computed with, from their manifests."""
    out: dict[str, Any] = {}
    for stage in STAGES:
        m = _manifest(cache_dir, stage, keys.get(stage))
        for section, values in ((m or {}).get("params") or {}).items():
            for k, v in flatten(values, section).items():
                out.setdefault(k, v)
    return out


# --- show ----------------------------------------------------------------------------------------

def show_latest(cache_dir: Path) -> str:
    """The latest run's headline metrics as text tables.

    Args:
      cache_dir: the cache root the run used.

    Returns:
      Text: when and how the run was made, each stage's key and state, a table of every head's
      accuracy, mean per-class accuracy and log loss per split, the attack's metrics, and where
      the HTML report is.

    Raises:
      UserError: no run was recorded in this cache.
    """
    latest = read_latest(cache_dir)
    # latest.json is written with sorted keys; show the stages in pipeline order.
    stages = dict(sorted(latest["stages"].items(),
                         key=lambda kv: STAGES.index(kv[0]) if kv[0] in STAGES else len(STAGES)))
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
    heads = read_heads_metrics(_out(cache_dir, "heads", keys.get("heads")),
                                       _out(cache_dir, "finetune", keys.get("finetune")))
    if heads and heads["heads"]:
        rows = []
        for name, h in heads["heads"].items():
            for split, m in h["splits"].items():
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

def _side(cache_dir: Path, ref: str) -> tuple[str, dict[str, str]]:
    """('latest' or a heads key) -> (label, stage keys)."""
    if ref == "latest":
        stages = read_latest(cache_dir)["stages"]
        keys = {n: s["key"] for n, s in stages.items() if s.get("key")}
        if not _out(cache_dir, "heads", keys.get("heads")):
            raise UserError("the latest run has no complete heads output to compare; run "
                            "`python -m pipeline run heads` first.")
        return f"latest ({keys['heads'][:8]})", keys
    key = find_key(cache_dir, "heads", ref)
    return key[:8], chain_from_heads(cache_dir, key)


def compare(args: argparse.Namespace, resolve: Callable[[argparse.Namespace], tuple]) -> str:
    """Two runs' metrics side by side with the change, then the params that differ.

    Args:
      args: the CLI's parsed `compare` arguments: ``a`` (heads key, unique prefix or ``latest``),
        ``b`` (another, or None: the run the ``-S`` / ``--params`` options describe), ``cache_dir``.
      resolve: ``resolve(args) -> (graph, params files, params)`` (the CLI's own), used when ``b``
        is None.

    Returns:
      Text like ``dvc metrics diff``: one row per metric with both values and the change.

    Raises:
      UserError: a key matches nothing or several outputs, or the run given by params has no
        heads output yet.
    """
    cache_dir = args.cache_dir
    label_a, keys_a = _side(cache_dir, args.a)
    if args.b is not None:
        label_b, keys_b = _side(cache_dir, args.b)
    else:
        from pipeline import runner

        graph, files, params = resolve(args)
        plans = runner.plan(graph, params, cache_dir)
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
    pa, pb = run_params(cache_dir, keys_a), run_params(cache_dir, keys_b)
    # Only params both runs have: a stage one side has not run (its report) is no difference.
    diff = [[k, _fmt(k, pa[k]), _fmt(k, pb[k])]
            for k in sorted(set(pa) & set(pb)) if canonical(pa[k]) != canonical(pb[k])]
    out.append("")
    out.append(text_table(["param", "A", "B"], diff) if diff else "params: identical")
    return "\n".join(out)
