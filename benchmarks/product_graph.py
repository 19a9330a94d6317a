"""The product's stage graph with every stage's work replaced by nothing (for bench_engine).

Same names, versions, params sections, dependencies, fingerprints (the data stage's folder
digests with their stat memo), fan-out and downstream keys as `stages`, so a stage gets the same
key and the same cache folder as the real one; only `run` and `finalize` do nothing. Running it
once fills a cache in which the real graph's `status` and `run all` find every stage up to date,
without minutes of backbone and gradient work.
"""

from __future__ import annotations

import dataclasses

from pipeline.graph import load_graph


def _nothing(ctx) -> dict:
    return {}


STAGES = [dataclasses.replace(s, run=_nothing, finalize=None) for s in load_graph("stages").stages.values()]
