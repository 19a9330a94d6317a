"""Run one stage by hand in a test: a StageContext with a quiet reporter, params parsed as the CLI does;
and wait for a background run to reach a point."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

from pipeline.params import parse_section
from pipeline.progress import QuietReporter
from pipeline.stage import Stage, StageContext

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def section(cls: type, prefix: str, **values: Any) -> Any:
    """A params section from keyword values, validated like params.yaml."""
    return parse_section(cls, values, prefix=prefix)


def make_ctx(stage: Stage, params: Mapping[str, Any], out_dir: Path, cache_dir: Path | None = None,
             inputs: Mapping[str, Path] | None = None, process_index: int = 0, process_count: int = 1,
             reporter: QuietReporter | None = None) -> StageContext:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return StageContext(name=stage.name, key="test", params=dict(params), inputs=dict(inputs or {}),
                        out_dir=out_dir, cache_dir=Path(cache_dir or out_dir.parent / "cache"),
                        reporter=reporter or QuietReporter(), process_index=process_index,
                        process_count=process_count)


def run_stage(stage: Stage, params: Mapping[str, Any], out_dir: Path, **kw: Any) -> tuple[Any, StageContext]:
    """`stage.run(ctx)` then, as the runner does for one process, `stage.finalize(ctx)`."""
    ctx = make_ctx(stage, params, out_dir, **kw)
    summary = stage.run(ctx)
    if stage.finalize is not None:
        summary = stage.finalize(ctx)
    return summary, ctx


def wait_for(predicate, timeout: float = 30.0) -> bool:
    """Poll `predicate` every 50 ms until it is true (True) or `timeout` seconds pass (False)."""
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False
