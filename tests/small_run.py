"""One small real run shared by the report, `show`/`compare` and end-to-end tests.

`python -m pipeline run all` through the CLI, as a user types it, over the 37 Pets breeds of
../shared/data/pets-dev (3 photos each: one per split) with the real efficientnet_lite0 and few
ideal / attack steps. `tests/conftest.py` runs it once per test session (fixture ``small_run``):
`test_report` reads its outputs, `test_end_to_end` reruns it with changed params and checks
what reruns. Both suites ran a cold pipeline of their own before (about 40 and 50 s here).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import yaml

ROOT = Path(__file__).resolve().parents[1]
PETS = ROOT.parent / "shared" / "data" / "pets-dev"

# A smoke profile: every class (the plots must stay readable at 37), one photo per class and
# split, few steps everywhere. Keys of stages missing from this checkout are left out.
SMALL = {
    "data": {"source": "folder", "path": str(PETS), "val_fraction": 0.34, "test_fraction": 0.34},
    "backbone": {"name": "efficientnet_lite0"},
    "heads": {"shots": [], "logreg": {"c_per_decade": 1, "refine": False},
              "mlp": {"max_epochs": 8, "hidden": [64]}},
    "ideal": {"steps": 4, "compare": [], "transfer": []},
    "adversarial": {"methods": ["pgd"], "steps": 3, "refine_steps": 1, "max_images": 2, "batch_size": 2,
                    "save_examples": 2, "transfer": []},
    "inspect": {"photos": 2, "max_mistakes": 3, "max_correct": 3, "channels": 8},
    "report": {"max_mistakes": 12},
}


def cli(*args: str, cache: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m pipeline <args> --cache-dir <cache>`` from the repository root."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline", *args, "--cache-dir", str(cache)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _fit(schema_cls: type, values: dict) -> dict:
    """The part of `values` that `schema_cls` knows (nested sections recursively)."""
    fields = {f.name: f for f in dataclasses.fields(schema_cls)}
    out = {}
    for k, v in values.items():
        if k not in fields:
            continue
        default = fields[k].default_factory() if fields[k].default_factory is not dataclasses.MISSING else None
        out[k] = _fit(type(default), v) if dataclasses.is_dataclass(default) and isinstance(v, dict) else v
    return out


def make_small_run(root: Path) -> SimpleNamespace | str:
    """Run the SMALL profile into ``root/cache``; the run, or why it cannot run here (a skip reason).

    Returns:
      graph, cache_dir, params_file (the profile as a params file), plans (stage -> its `Plan`),
      out (the report's folder), html (report.html), stdout (the first `run all`'s output).
    """
    from pipeline import planner
    from pipeline.graph import load_graph

    if not PETS.is_dir():
        return f"real photos not found at {PETS} (../shared/data is only in the dev workplace)"
    graph = load_graph()
    params_file = root / "small.yaml"
    params_file.write_text(yaml.safe_dump({s: _fit(graph.schema[s], v) for s, v in SMALL.items()
                                           if s in graph.schema}))
    cache_dir = root / "cache"
    first = cli("run", "all", "--params", str(params_file), cache=cache_dir)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    plans = planner.plan(graph, planner.resolve_params(graph, [params_file], []), cache_dir)
    out = plans["report"].out
    return SimpleNamespace(graph=graph, cache_dir=cache_dir, params_file=params_file, plans=plans, out=out,
                           html=(out / "report.html").read_text(), stdout=first.stdout)
