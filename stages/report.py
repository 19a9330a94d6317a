"""Stage `report`: one self-contained HTML page (and a Markdown twin) about the run.

Reads every upstream stage's output folder and manifest (params, timings) and renders them with
`pipeline.report`. It imports no jax or tensorflow: matplotlib, PIL and numpy only, inside `run`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Literal

from pipeline.params import ParamsError, spec
from pipeline.stage import Stage, StageContext
from stages import STAGES


@dataclasses.dataclass(frozen=True)
class ReportParams:
    title: str = spec("Transfer-learning run", help="heading of the page")
    primary_head: str = spec("auto", help="head whose confusion matrix, per-class bars and mistakes are "
                                          "shown; 'auto' picks the best by CV (or val) accuracy")
    split: Literal["test", "val"] = spec("test", help="split the plots and mistakes are drawn from")
    max_mistakes: int = spec(24, min=0, max=500, help="most confident mistakes shown")
    max_ideal: int = spec(48, min=0, max=500, help="ideal images shown")
    max_adversarial: int = spec(12, min=0, max=200, help="adversarial triplets shown")
    thumbnail_size: int = spec(160, min=32, max=512, help="side of mistake thumbnails, pixels")
    dpi: int = spec(100, min=50, max=300, help="resolution of the plots")

    def validate(self) -> None:
        if not self.title.strip():
            raise ParamsError("title: must not be empty.")
        if not self.primary_head.strip():
            raise ParamsError("primary_head: must be a head name or 'auto', got ''.")


# The report reads every other stage of the graph, in the graph's order (stages/__init__.py).
_UPSTREAM = tuple(name for name in STAGES if name != "report")


def params_schema() -> dict[str, type]:
    """Every params section the product's stages define (section -> dataclass), for the defaults.

    The stage only receives its own section; the values the other stages used come from their
    manifests, and their defaults from these dataclasses.
    """
    from pipeline.graph import load_graph

    return load_graph().schema


def run(ctx: StageContext) -> dict:
    """Render report.html, report.md and assets/ into ctx.out_dir.

    Returns:
      {"html": file name, "sections": count shown, "not_run": [section ids without data]}.
    """
    from pipeline.report import sections, writer

    started = time.perf_counter()
    p: ReportParams = ctx.params["report"]
    opts = sections.Options(**dataclasses.asdict(p))
    doc = sections.build(ctx.inputs, {"report": p}, params_schema(), opts, log=ctx.log, started=started)
    html_path, md_path = writer.write(doc, ctx.out_dir)
    not_run = [s.id for s in doc.sections if s.status != "ok"]
    ctx.log(f"wrote {html_path.name} ({html_path.stat().st_size / 1e6:.1f} MB) and {md_path.name}"
            + (f"; not run: {', '.join(not_run)}" if not_run else ""))
    return {"html": html_path.name, "sections": len(doc.sections) - len(not_run), "not_run": not_run}


STAGE = Stage(
    name="report",
    run=run,
    deps=_UPSTREAM,
    sections=("report",),
    version="2",
    schemas={"report": ReportParams},
    description="one self-contained HTML page and a Markdown twin about the run",
)
