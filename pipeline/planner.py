"""Planning a run: resolve params, key every stage, and say what is stale and why.

Nothing here imports jax, flax or tensorflow: deciding what is up to date reads params, hashes
them, and stats folders (`status` and a no-op `run` stay quick). Running what is stale is
`pipeline.runner.execute`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline import cache, storage
from pipeline.graph import Graph
from pipeline.params import (ParamsError, apply_override, load_yaml, parse_all, parse_override,
                             to_plain)


def resolve_params(graph: Graph, params_files: Sequence[Path] = (), overrides: Sequence[str] = (),
                   ) -> dict[str, Any]:
    """params files (later ones overlay earlier ones), then ``-S`` overrides, then validation.

    Returns:
      section name -> frozen dataclass, for every section the graph defines.

    Raises:
      ParamsError: naming the key, the value, and what is allowed.
    """
    raw: dict[str, Any] = {}
    for path in params_files:
        for section, values in _load_params_file(path).items():
            if isinstance(values, dict) and isinstance(raw.get(section), dict):
                _deep_update(raw[section], values)
            else:
                raw[section] = values
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(raw, keys, value)
    source = ", ".join(str(p) for p in params_files) or "defaults"
    return parse_all(graph.schema, raw, source=source)


def _load_params_file(path: Path) -> dict:
    """`load_yaml`, with a folder, a binary file or an unreadable one named as a ParamsError."""
    try:
        return load_yaml(path)
    except UnicodeDecodeError as e:
        raise ParamsError(f"params file {str(path)!r} is not UTF-8 text (byte {e.start} cannot be "
                          f"decoded): pass a YAML params file, e.g. --params params.yaml.") from None
    except OSError as e:
        from pipeline.errors import describe_os_error

        raise ParamsError(describe_os_error(e, "the params file").replace(
            "; pass a file.", "; pass a YAML params file, e.g. --params params.yaml.")) from None


def _deep_update(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


@dataclasses.dataclass
class StagePlan:
    """One stage's key and state for the resolved params.

    A fanned-out stage (`Stage.fan_out`) has one plan per part in `parts`, each with its own key
    and output folder; the stage's own `key`, `out` and `params` are its first part's, and it is
    up to date when every part is.
    """

    name: str
    key: str
    params: dict[str, Any]          # declared sections only
    upstream: dict[str, str]        # dep name -> key
    fingerprint: str | None
    up_to_date: bool
    out: Any                        # output folder (Path, or epath.Path on a remote root)
    reasons: list[str]              # why it is stale or missing; empty when up to date
    parts: list["StagePlan"] = dataclasses.field(default_factory=list)

    @property
    def state(self) -> str:
        """``up to date``, ``missing`` (never run), ``damaged`` (an output failed `cache.damage`)
        or ``stale``."""
        if self.up_to_date:
            return "up to date"
        if all(r.endswith("missing: never run") for r in self.reasons):
            return "missing"
        return "damaged" if any(_is_damage(r) for r in self.reasons) else "stale"

    def describe(self) -> str:
        """The state and, unless it says it all, why: ``missing``, ``stale: param x: 1 -> 2``."""
        if self.state in ("up to date", "missing"):
            return self.state
        return f"{self.state}: " + "; ".join(
            r.replace("damaged: ", "", 1) if self.state == "damaged" else r for r in self.reasons)

    @property
    def dep_key(self) -> str:
        """What downstream keys hash: the key, or for several parts a hash of all their keys."""
        if len(self.parts) < 2:
            return self.key
        return cache.stage_key(self.name, "parts", {}, {str(i): p.key for i, p in enumerate(self.parts)})

    def each(self) -> list["StagePlan"]:
        """The plans that run: the parts, or the stage itself."""
        return self.parts or [self]


def _is_damage(reason: str) -> bool:
    return reason.startswith("damaged: ") or ": damaged: " in reason


def plan(graph: Graph, params: Mapping[str, Any], root: Any, local_dir: Path | None = None,
         verify: bool = False) -> dict[str, StagePlan]:
    """Key every stage in dependency order and compare with what the cache holds.

    Args:
      graph, params: the stages and the resolved params.
      root: the cache root (a folder or a ``gs://`` URL).
      local_dir: this host's local folder for a remote root (default
        `pipeline.storage.default_local_dir()`); fingerprints keep their memos there.
      verify: compare every published file with its digest (reads every byte); without it
        only sizes are compared. Either way a damaged output is stale, with the damage as reason.
    """
    plans: dict[str, StagePlan] = {}
    scratch = Path(local_dir or storage.default_local_dir()) if storage.is_remote(root) else Path(root)
    for name, stage in graph.stages.items():
        sections = {s: params[s] for s in stage.sections}
        upstream = {d: _dep_key(graph.stages[d], plans[d], d in stage.reads_part) for d in stage.deps}
        variants = stage.fan_out(sections) if stage.fan_out else [sections]
        parts = [_plan_one(root, name, stage, dict(v), upstream, scratch, verify) for v in variants]
        if len(parts) == 1:
            plans[name] = parts[0]
        else:
            first = parts[0]
            labels = _part_labels(parts)
            reasons = [f"{label}: {r}" for label, p in zip(labels, parts) for r in p.reasons]
            plans[name] = StagePlan(name, first.key, first.params, upstream, first.fingerprint,
                                    all(p.up_to_date for p in parts), first.out, reasons, parts)
    return plans


def _plan_one(root: Any, name: str, stage: Any, sections: dict[str, Any],
              upstream: dict[str, str], scratch: Path, verify: bool = False) -> StagePlan:
    fp = stage.fingerprint(sections, scratch) if stage.fingerprint else None
    key = cache.stage_key(name, stage.version, sections, upstream, fp)
    done = cache.is_complete(root, name, key)
    damaged = cache.damage(root, name, key, digests=verify) if done else None
    if damaged:
        done, reasons = False, [damaged]
    else:
        reasons = [] if done else _why_stale(root, name, stage.version, sections, upstream, fp)
    return StagePlan(name, key, sections, upstream, fp, done, cache.output_dir(root, name, key), reasons)


def _part_labels(parts: Sequence[StagePlan]) -> list[str]:
    """Each part named by the param values that tell the parts apart (a backbone's name)."""
    flats = []
    for p in parts:
        flat: dict[str, Any] = {}
        _flatten("", to_plain(dict(p.params)), flat)
        flats.append(flat)
    differ = [k for k in flats[0] if len({repr(f.get(k)) for f in flats}) > 1]
    return [",".join(str(f[k]) for k in differ) or p.key for f, p in zip(flats, parts)]


def _dep_key(dep: Any, p: StagePlan, part: bool) -> str:
    """What a downstream key hashes for upstream `dep`: its key (all parts' keys for a fanned-out
    stage), or the key of the part of its output that the downstream stage reads."""
    token = dep.downstream_key(p.params) if part and dep.downstream_key else None
    return p.dep_key if token is None else cache.stage_key(dep.name, dep.version, {}, {}, token)


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = value


def _why_stale(root: Any, name: str, version: str, sections: Mapping[str, Any],
               upstream: Mapping[str, str], fp: str | None) -> list[str]:
    """Compare with the newest complete output of this stage and name what differs."""
    previous = next(cache.iter_manifests(root, name), None)
    if previous is None:
        return ["missing: never run"]
    reasons = []
    if previous.get("version") != version:
        reasons.append(f"code version {previous.get('version')} -> {version}")
    old, new = {}, {}
    _flatten("", previous.get("params", {}), old)
    _flatten("", to_plain(dict(sections)), new)
    for k in sorted(set(old) | set(new)):
        if old.get(k, "<unset>") != new.get(k, "<unset>"):
            reasons.append(f"param {k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}")
    for d, k in upstream.items():
        if previous.get("upstream", {}).get(d) != k:
            reasons.append(f"upstream {d} changed")
    if previous.get("fingerprint") != fp:
        reasons.append("input files changed")
    return reasons or ["output was removed"]
