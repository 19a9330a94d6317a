"""The product through its CLI: `run all` on real photos, then rerun only what a param touches.

Real efficientnet_lite0 weights, the real stages, a smoke profile on the 37 Pets breeds: the
session's shared run (`tests.small_run`, fixture ``small_run``, also read by `test_report`).
Checks what a user relies on: every stage runs once, `status` is then up to date, a heads change
reruns heads and its downstream stages but not the backbone pass, setting it back reuses the
first outputs, `show` and `compare` answer, and params.yaml holds the defaults.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.small_run import cli

ROOT = Path(__file__).resolve().parents[1]


def actions(stdout: str) -> dict[str, str]:
    """Stage -> ran / reused, from the end-of-run summary lines."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in ("ran", "reused"):
            out[parts[0]] = parts[1]
    return out


def test_params_yaml_holds_the_defaults():
    """params.yaml is written by `params --commented --params /dev/null`; keep it in step with the code."""
    from pipeline import planner
    from pipeline.graph import load_graph
    from pipeline.params import to_plain

    graph = load_graph()
    assert to_plain(planner.resolve_params(graph, [ROOT / "params.yaml"])) == \
        to_plain(planner.resolve_params(graph, [])), \
        "params.yaml differs from the code defaults: python -m pipeline params --commented --params /dev/null > params.yaml"
    smoke = planner.resolve_params(graph, [ROOT / "params.yaml", ROOT / "params.smoke.yaml"])
    assert smoke["data"].max_per_class == 8


def test_dag_and_backbones_commands(tmp_path):
    dag = cli("dag", cache=tmp_path)
    assert dag.returncode == 0 and "features" in dag.stdout and "◄ data" in dag.stdout
    out = subprocess.run([sys.executable, "-m", "pipeline", "backbones", "--cache-dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    for name in ("efficientnet_lite0", "efficientnet_lite2", "mobilenet_v2", "resnet50", "vgg16", "vgg19"):
        assert name in out.stdout


@pytest.mark.slow
def test_run_all_then_rerun_only_what_changed(small_run):
    cache = small_run.cache_dir
    base = ["--params", str(small_run.params_file)]
    assert actions(small_run.stdout) == {s: "ran" for s in
                                         ("data", "features", "doctor", "heads", "trunk", "finetune", "inspect",
                                          "ideal", "adversarial", "report")}
    status = json.loads(cli("status", "--json", *base, cache=cache).stdout)
    assert all(s["up_to_date"] for s in status["stages"])
    report = Path(next(s["out"] for s in status["stages"] if s["name"] == "report")) / "report.html"
    assert report.is_file() and report.stat().st_size > 10_000

    # A heads param: heads and what reads it rerun; data and the backbone pass are reused.
    changed = [*base, "-S", "heads.mlp.dropout=0.3"]
    text = cli("status", *changed, cache=cache).stdout
    assert "param heads.mlp.dropout: 0.5 -> 0.3" in text
    second = cli("run", "all", *changed, cache=cache)
    assert second.returncode == 0, second.stderr[-3000:]
    assert actions(second.stdout) == {"data": "reused", "features": "reused", "doctor": "reused", "heads": "ran",
                                      "trunk": "reused", "finetune": "ran",  # a stub: enabled: false
                                      "inspect": "ran", "ideal": "ran", "adversarial": "ran", "report": "ran"}

    # A doctor param while the doctor only reports: the doctor and the report rerun, the heads
    # (and the gradient stages after them) do not, since the drop list they read is still empty.
    doctor = [*base, "-S", "doctor.threshold=0.7"]
    fourth = cli("run", "all", *doctor, cache=cache)
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    assert actions(fourth.stdout) == {"data": "reused", "features": "reused", "doctor": "ran", "heads": "reused",
                                      "trunk": "reused", "finetune": "reused", "inspect": "reused",
                                      "ideal": "reused", "adversarial": "reused", "report": "ran"}

    # A fine-tuning param while fine-tuning is disabled: its stub and the report rerun; the
    # gradient stages, which could use a fine-tuned head, do not (there is none).
    tune = [*base, "-S", "finetune_train.lr_head=0.001"]
    fifth = cli("run", "all", *tune, cache=cache)
    assert fifth.returncode == 0, fifth.stderr[-3000:]
    assert {k for k, v in actions(fifth.stdout).items() if v == "ran"} == {"finetune", "report"}

    # Setting it back reuses every earlier output: nothing runs.
    third = cli("run", "all", *base, cache=cache)
    assert third.returncode == 0 and set(actions(third.stdout).values()) == {"reused"}

    show = cli("show", cache=cache)
    assert show.returncode == 0 and "logreg" in show.stdout and "test" in show.stdout
    heads_keys = [s["key"] for s in status["stages"] if s["name"] == "heads"]
    cmp = cli("compare", heads_keys[0], *changed, cache=cache)
    assert cmp.returncode == 0, cmp.stderr
    assert "heads.mlp.dropout" in cmp.stdout
