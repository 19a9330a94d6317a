"""Which trained classifier to use: the run (from params or a heads key) and the head in it.

A run is found the way `compare` finds one: ``--run KEY`` is a heads key, a unique prefix of one,
or ``latest``; without it, the current params (params.yaml, ``--params``, ``-S``) are keyed as
`run` would key them. From the heads output's manifest the features output is found, and from
that one's manifest the backbone and the preprocessing (test-time views) the heads were trained
on: predicting with anything else would feed the head features it never saw. Nothing here
imports jax.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline import cache, publish, results, storage
from pipeline.errors import UserError
from pipeline.heads import artifact


@dataclasses.dataclass(frozen=True)
class RunRef:
    """A finished heads output and what it was trained on.

    Attributes:
      cache_dir: the cache root.
      keys: stage name -> key for data, features and heads.
      heads_dir: local folder of the heads output.
      backbone: the ``backbone`` params the features stage used (name, dtype, depthwise).
      features: the ``features`` params it used (augment, n_crops, reduce, dtype, ...).
      classes: class names, index = label.
      metrics: the heads output's `pipeline.heads.artifact.HeadsMetrics` (no heads when it has no metrics.json).
      params: flat ``section.key`` params of the run's stages (for the model card).
    """

    cache_dir: Any
    keys: Mapping[str, str]
    heads_dir: Path
    backbone: Mapping[str, Any]
    features: Mapping[str, Any]
    classes: list[str]
    metrics: artifact.HeadsMetrics
    params: Mapping[str, Any]

    @property
    def backbone_name(self) -> str:
        """The single backbone of the run (a fused multi-backbone run is refused, see `resolve`)."""
        return str(self.backbone["name"])


def _how(files: Sequence[Any], overrides: Sequence[str], cache_dir: Any = None) -> str:
    """The options that give these params (and this cache), as the user would type them."""
    import shlex

    cache = [] if cache_dir is None or str(cache_dir) == "cache" else [f"--cache-dir {shlex.quote(str(cache_dir))}"]
    return " ".join([*(f"--params {shlex.quote(str(f))}" for f in files or []),
                     *(f"-S {shlex.quote(o)}" for o in overrides or []), *cache])


def heads_key_from_params(cache_dir: Any, graph: Any, params: Mapping[str, Any],
                          files: Sequence[Any] = (), overrides: Sequence[str] = ()) -> str:
    """The heads key the params give, or a UserError naming the first stage still to run."""
    from pipeline import planner

    plans = planner.plan(graph, params, cache_dir)
    if "heads" not in plans:
        raise UserError("this pipeline has no heads stage, so there is no classifier to use.")
    heads = plans["heads"]
    if heads.up_to_date:
        return heads.key
    opts = _how(files, overrides, cache_dir)
    chain = [n for n in graph.upstream_closure(["heads"])]
    todo = [f"{n} ({plans[n].describe()})" for n in chain if not plans[n].up_to_date]
    said = _how(files, overrides) or "params.yaml"
    raise UserError(f"no trained classifier for these params ({said}) in {cache_dir}: "
                    f"{', '.join(todo)}. Run `python -m pipeline run heads {opts}`".rstrip()
                    + " first, or pass --run KEY (a heads key from `python -m pipeline show`).")


def heads_key_from_ref(cache_dir: Any, ref: str) -> str:
    """``latest`` or a heads key / unique prefix -> the full heads key (a UserError otherwise)."""
    if ref == "latest":
        key = (results.read_latest(cache_dir)["stages"].get("heads") or {}).get("key")
        if not key or not cache.is_complete(cache_dir, "heads", key):
            raise UserError("the latest run has no complete heads output; run "
                            "`python -m pipeline run heads` first.")
        return key
    return results.find_key(cache_dir, "heads", ref)


def load_run(cache_dir: Any, heads_key: str) -> RunRef:
    """Read the heads output `heads_key` and the features manifest behind it.

    Raises:
      UserError: the features output it was trained on is gone, or its backbone cannot be used.
    """
    keys = results.chain_from_heads(cache_dir, heads_key)
    heads_dir = publish.local_copy(cache_dir, "heads", heads_key, storage.default_local_dir())
    from pipeline.heads.trained import fused_backbones

    blocks = fused_backbones(heads_dir)
    if blocks:
        # A fused run (several backbones, one feature vector) needs one pixel input per backbone.
        raise UserError(f"heads output {heads_key} was trained on the fused features of {', '.join(blocks)}; "
                        f"predict and export handle one backbone per run. For a classifier to deploy, run "
                        f"the heads on one of them (`python -m pipeline run heads <your --params> "
                        f"-S backbone.name={blocks[0]}`: its features are already cached) and predict from "
                        f"that run (--run latest).")
    fkey = keys.get("features")
    fman = (cache.read_manifest(cache.output_dir(cache_dir, "features", fkey))
            if fkey and cache.is_complete(cache_dir, "features", fkey) else None)
    if fman:
        # predict reads no features, but a damaged features output means the run is not whole
        cache.require_intact(cache_dir, "features", fkey)
    if not fman:
        raise UserError(f"heads output {heads_key} was trained on features output {fkey}, which is no "
                        f"longer in {cache_dir}; rerun `python -m pipeline run heads` with that run's params.")
    fparams = fman.get("params") or {}
    backbone = dict(fparams.get("backbone") or {})
    from pipeline.heads import trained

    classes = trained.read_classes(heads_dir)
    return RunRef(cache_dir=cache_dir, keys={k: v for k, v in keys.items() if k in ("data", "features", "heads")},
                  heads_dir=heads_dir, backbone=backbone, features=dict(fparams.get("features") or {}),
                  classes=classes, metrics=artifact.read(heads_dir) or artifact.HeadsMetrics(classes=classes, heads={}),
                  params=results.run_params(cache_dir, keys))


def choose_head(run: RunRef, wanted: str | None, primary_head: str = "auto") -> str:
    """The head to use.

    Args:
      run: the run.
      wanted: ``--head``: a head name, ``best`` (the report's ``auto`` rule: best by CV or val accuracy) or None
        (the head the report calls primary: `primary_head`, i.e. ``report.primary_head``).
      primary_head: ``report.primary_head`` of the current params.

    Raises:
      UserError: the head is not in this run (``finetune`` says which stage makes it).
    """
    from pipeline.heads.trained import available
    from pipeline.heads.primary import choose_primary

    names = available(run.heads_dir)
    if wanted is None:
        chosen = choose_primary(run.metrics, primary_head)
        if chosen in names:
            return chosen
        wanted = chosen or "best"
    if wanted == "best":
        # The report's 'auto' rule, over the heads that were saved (metrics may list more).
        saved = {n: h for n, h in run.metrics.heads.items() if n in names}
        chosen = choose_primary(dataclasses.replace(run.metrics, heads=saved), "auto")
        if chosen is None:
            raise UserError(f"{run.heads_dir} has no saved head with metrics; rerun the heads stage.")
        return chosen
    if wanted in names:
        return wanted
    if wanted == "finetune":
        raise UserError("--head finetune needs the finetune stage's output (a fine-tuned backbone top "
                        "and its head), which this run does not have; use --head logreg, mlp or best, "
                        f"or run the finetune stage first. Heads of this run: {', '.join(names)}.")
    raise UserError(f"--head {wanted!r}: no such head in {run.heads_dir}; choose one of "
                    f"{', '.join([*names, 'best'])}.")
