"""A small real stage graph for the engine's own tests: numbers -> total, plus a slow stage.

It exercises every part of the engine (params sections, keys, upstream keys, atomic publish,
resumable folders, fingerprints) without jax, so the engine tests run in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Literal

from pipeline.params import spec
from pipeline.stage import Stage, StageContext


@dataclasses.dataclass(frozen=True)
class NumbersParams:
    count: int = spec(5, min=1, help="how many numbers")
    start: int = 0
    mode: Literal["linear", "square"] = "linear"
    source: str = spec("", help="a folder whose files are fingerprinted (empty: none)")
    threads: int = spec(1, min=1, affects_output=False, help="how it runs, not what it writes")


@dataclasses.dataclass(frozen=True)
class TotalInner:
    offset: float = 0.0
    label: str = "sum"


@dataclasses.dataclass(frozen=True)
class TotalParams:
    scale: float = spec(1.0, min=0.0, min_exclusive=True)
    weights: tuple[float, ...] = spec((1.0,), min_len=1, min=0.0)
    inner: TotalInner = dataclasses.field(default_factory=TotalInner)
    unrelated: int = 0  # read by total only; numbers must not care


@dataclasses.dataclass(frozen=True)
class SlowParams:
    seconds: float = spec(0.0, min=0.0)
    steps: int = spec(3, min=1)


@dataclasses.dataclass(frozen=True)
class SpreadParams:
    fail_on: int = spec(-1, help="process index that raises (-1: none)")


def _spread(ctx: StageContext) -> dict:
    """Every process writes its own part; process 0 joins them in `finalize`."""
    p = ctx.params["spread"]
    if ctx.process_index == p.fail_on:
        raise RuntimeError(f"disk full on process {ctx.process_index}")
    values = json.loads((ctx.inputs["numbers"] / "numbers.json").read_text())
    mine = values[ctx.process_index::ctx.process_count]
    (ctx.out_dir / f"part-{ctx.process_index}.json").write_text(json.dumps(mine))
    return None


def _spread_finalize(ctx: StageContext) -> dict:
    parts = sorted(ctx.out_dir.glob("part-*.json"))
    total = sum(sum(json.loads(f.read_text())) for f in parts)
    (ctx.out_dir / "total.json").write_text(json.dumps(total))
    return {"parts": len(parts), "total": total}


def _numbers(ctx: StageContext) -> dict:
    p = ctx.params["numbers"]
    values = [p.start + (i if p.mode == "linear" else i * i) for i in range(p.count)]
    (ctx.out_dir / "numbers.json").write_text(json.dumps(values))
    _count_run(ctx)
    return {"count": len(values)}


def _total(ctx: StageContext) -> dict:
    p = ctx.params["total"]
    values = json.loads((ctx.inputs["numbers"] / "numbers.json").read_text())
    total = sum(values) * p.scale * p.weights[0] + p.inner.offset
    (ctx.out_dir / "total.json").write_text(json.dumps({"total": total}))
    _count_run(ctx)
    return {"total": total}


def _slow(ctx: StageContext) -> dict:
    """Writes one step file per step; resumable, so a killed run continues where it stopped."""
    p = ctx.params["slow"]
    done = sorted(ctx.out_dir.glob("step-*.json"))
    (ctx.out_dir / f"started-{os.getpid()}").write_text("")
    for i in range(len(done), p.steps):
        time.sleep(p.seconds)
        tmp = ctx.out_dir / f".step-{i}.tmp"
        tmp.write_text(json.dumps({"step": i}))
        os.replace(tmp, ctx.out_dir / f"step-{i:03d}.json")
    _count_run(ctx)
    return {"steps": p.steps, "resumed_from": len(done)}


def _count_run(ctx: StageContext) -> None:
    """Append to a log outside the cache so tests can count real executions."""
    log = os.environ.get("TOY_RUN_LOG")
    if log:
        with open(log, "a") as f:
            f.write(ctx.name + "\n")


def _fingerprint(sections, local_dir) -> str:
    src = sections["numbers"].source
    if not src:
        return ""
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                    for p in sorted(Path(src).iterdir()))


STAGES = [
    Stage(name="numbers", run=_numbers, sections=("numbers",), schemas={"numbers": NumbersParams},
          fingerprint=_fingerprint, description="make numbers"),
    Stage(name="total", run=_total, deps=("numbers",), sections=("total",),
          schemas={"total": TotalParams}, description="sum them"),
    Stage(name="slow", run=_slow, deps=("numbers",), sections=("slow",),
          schemas={"slow": SlowParams}, resumable=True, description="sleepy, resumable"),
    Stage(name="spread", run=_spread, deps=("numbers",), sections=("spread",),
          schemas={"spread": SpreadParams}, all_processes=True, finalize=_spread_finalize,
          description="every process does a part"),
]
