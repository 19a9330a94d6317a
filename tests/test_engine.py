"""The engine: keys, params validation, rerun-only-what-changed, run-cache, kills, locks, CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Union

import pytest

from pipeline import cache, planner, runner
from pipeline.graph import load_graph
from pipeline.params import ParamsError, spec
from pipeline.progress import QuietReporter
from tests.stage_helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]
TOY = "tests.toy_graph"


@pytest.fixture()
def graph():
    return load_graph(TOY)


def run_cli(*args: str, cwd: Path, env_extra: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def keys_for(graph, *overrides: str, root: Path) -> dict[str, str]:
    params = planner.resolve_params(graph, [], overrides)
    return {n: p.key for n, p in planner.plan(graph, params, root).items()}


# --- keys ----------------------------------------------------------------------------------------

def test_key_is_stable_across_processes(graph, tmp_path):
    here = keys_for(graph, root=tmp_path)
    out = run_cli("status", "--json", "--graph", TOY, "--cache-dir", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    there = {s["name"]: s["key"] for s in json.loads(out.stdout)["stages"]}
    assert here == there


def _leaf_overrides(section: str, cls: type, prefix: str = "") -> list[tuple[str, object]]:
    """One changed value for every leaf field of a section dataclass (nested ones included)."""
    out = []
    inst = cls()
    for f in dataclasses.fields(cls):
        value = getattr(inst, f.name)
        key = f"{prefix}{f.name}"
        if not f.metadata.get("affects_output", True):
            continue  # covered by test_runtime_only_params_stay_out_of_the_key
        if dataclasses.is_dataclass(value):
            out += _leaf_overrides(section, type(value), prefix=f"{key}.")
        elif isinstance(value, bool):
            out.append((key, not value))
        elif isinstance(value, (int, float)):
            out.append((key, value + 1))
        elif isinstance(value, tuple):
            out.append((key, list(value) + [2.0]))
        elif f.name == "mode":
            out.append((key, "square"))
        elif f.name == "source":
            continue  # a folder path; covered by the fingerprint test

        else:
            out.append((key, value + "x"))
    return out


def test_every_declared_param_changes_the_key_and_nothing_else_does(graph, tmp_path):
    base = keys_for(graph, root=tmp_path)
    for section, cls in graph.schema.items():
        for key, value in _leaf_overrides(section, cls):
            changed = keys_for(graph, f"{section}.{key}={json.dumps(value)}", root=tmp_path)
            readers = {s.name for s in graph.stages.values() if section in s.sections}
            affected = set(readers)
            for r in readers:
                affected.update(graph.downstream(r))
            for stage in graph.names:
                if stage in affected:
                    assert changed[stage] != base[stage], f"{section}.{key} must change {stage}'s key"
                else:
                    assert changed[stage] == base[stage], f"{section}.{key} must not change {stage}'s key"


def test_runtime_only_params_stay_out_of_the_key(graph, tmp_path):
    assert keys_for(graph, "numbers.threads=8", root=tmp_path) == keys_for(graph, root=tmp_path)


def test_same_value_spelled_differently_gives_same_key(graph, tmp_path):
    # YAML 2 and 2.0 are the same float param once validated; the key hashes canonical values.
    assert keys_for(graph, "total.scale=2", root=tmp_path) == keys_for(graph, "total.scale=2.0", root=tmp_path)


def test_code_version_changes_the_key(graph, tmp_path):
    before = keys_for(graph, root=tmp_path)
    graph.stages["numbers"] = dataclasses.replace(graph.stages["numbers"], version="2")
    after = keys_for(graph, root=tmp_path)
    assert all(after[n] != before[n] for n in ("numbers", "total", "slow"))


def test_input_fingerprint_makes_stage_stale(graph, tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"x")
    ov = f"numbers.source={src}"
    k1 = keys_for(graph, ov, root=tmp_path)
    (src / "b.jpg").write_bytes(b"y")
    k2 = keys_for(graph, ov, root=tmp_path)
    assert k1["numbers"] != k2["numbers"] and k1["total"] != k2["total"]


# --- run, rerun, reuse ---------------------------------------------------------------------------

def _execute(graph, root, *overrides, targets=("total", "slow"), force=()):
    params = planner.resolve_params(graph, [], overrides)
    return {r.name: r.action for r in runner.execute(graph, params, root, targets, QuietReporter(), force=force)}


def test_rerun_only_changed_stage_and_revert_reuses(graph, tmp_path):
    assert _execute(graph, tmp_path) == {"numbers": "ran", "total": "ran", "slow": "ran"}
    assert _execute(graph, tmp_path) == {"numbers": "reused", "total": "reused", "slow": "reused"}
    # A `total` param: only total reruns; its sibling `slow` and upstream `numbers` are reused.
    assert _execute(graph, tmp_path, "total.scale=3") == {"numbers": "reused", "total": "ran", "slow": "reused"}
    # Setting it back reuses the first output (run-cache): nothing runs.
    assert _execute(graph, tmp_path) == {"numbers": "reused", "total": "reused", "slow": "reused"}
    out = json.loads((planner.plan(graph, planner.resolve_params(graph, [], []), tmp_path)["total"].out
                      / "total.json").read_text())
    assert out == {"total": 10.0}
    # An upstream change reruns everything downstream of it.
    assert _execute(graph, tmp_path, "numbers.count=7") == {"numbers": "ran", "total": "ran", "slow": "ran"}


def test_run_single_target_runs_only_its_closure(graph, tmp_path):
    assert _execute(graph, tmp_path, targets=("total",)) == {"numbers": "ran", "total": "ran"}
    assert not any((tmp_path / "slow").glob("*")) if (tmp_path / "slow").exists() else True


def test_force_reruns_one_stage(graph, tmp_path):
    _execute(graph, tmp_path)
    assert _execute(graph, tmp_path, force=("total",)) == {"numbers": "reused", "total": "ran", "slow": "reused"}


def test_manifest_records_params_upstream_versions_and_files(graph, tmp_path):
    _execute(graph, tmp_path, "total.scale=2")
    plans = planner.plan(graph, planner.resolve_params(graph, [], ["total.scale=2"]), tmp_path)
    m = cache.read_manifest(plans["total"].out)
    assert m["params"]["total"]["scale"] == 2.0
    assert m["upstream"] == {"numbers": plans["numbers"].key}
    assert m["key"] == plans["total"].key and m["version"] == "1"
    assert "python" in m["versions"] and m["started"] <= m["ended"]
    written = (plans["total"].out / "total.json").read_bytes()
    assert m["files"] == [{"path": "total.json", "size": len(written),
                           "sha256": hashlib.sha256(written).hexdigest()}]
    assert m["summary"] == {"total": 20.0}


def test_status_explains_staleness(graph, tmp_path):
    _execute(graph, tmp_path)
    plans = planner.plan(graph, planner.resolve_params(graph, [], ["total.inner.offset=1.5"]), tmp_path)
    assert plans["numbers"].up_to_date and plans["slow"].up_to_date
    assert plans["total"].state == "stale"
    assert plans["total"].reasons == ["param total.inner.offset: 0.0 -> 1.5"]


def test_failing_stage_leaves_no_output(graph, tmp_path):
    def boom(ctx):
        (ctx.out_dir / "half.json").write_text("{")
        raise RuntimeError("stage bug")

    graph.stages["total"] = dataclasses.replace(graph.stages["total"], run=boom)
    with pytest.raises(RuntimeError, match="stage bug"):
        _execute(graph, tmp_path, targets=("total",))
    plans = planner.plan(graph, planner.resolve_params(graph, [], []), tmp_path)
    assert not plans["total"].up_to_date
    assert not cache.partial_dir(tmp_path, "total", plans["total"].key).exists()
    assert plans["numbers"].up_to_date  # finished upstream work is kept


# --- CLI: kill, concurrency, bad params ----------------------------------------------------------

def test_sigkill_mid_stage_then_rerun_resumes(tmp_path):
    args = ["run", "slow", "--graph", TOY, "--cache-dir", str(tmp_path / "c"),
            "-S", "slow.seconds=0.4", "-S", "slow.steps=8"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    slow_dir = tmp_path / "c" / "slow"
    assert wait_for(lambda: len(list(slow_dir.glob("*.partial/step-*.json"))) >= 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Nothing looks complete; the partial folder with finished steps is there to resume from.
    assert not [p for p in slow_dir.iterdir() if not p.name.endswith(".partial")]
    done_before = len(list(slow_dir.glob("*.partial/step-*.json")))
    # The lock file still names the dead process; the next run takes it over.
    holder = json.loads((tmp_path / "c" / ".lock").read_text())
    assert holder["pid"] == proc.pid
    out = run_cli(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "took over a stale lock" in out.stderr and str(proc.pid) in out.stderr
    (final,) = [p for p in slow_dir.iterdir() if not p.name.endswith(".partial")]
    manifest = cache.read_manifest(final)
    assert manifest["summary"]["resumed_from"] == done_before >= 2
    assert sorted(f["path"] for f in manifest["files"] if f["path"].startswith("step-")) == \
        [f"step-{i:03d}.json" for i in range(8)]


def test_two_runs_at_once_second_names_the_holder(tmp_path):
    args = ["run", "slow", "--graph", TOY, "--cache-dir", str(tmp_path / "c"),
            "-S", "slow.seconds=0.5", "-S", "slow.steps=6"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: list((tmp_path / "c" / "slow").glob("*.partial/started-*")))
        second = run_cli(*args, cwd=tmp_path)
        assert second.returncode == 2
        assert "in use by another run" in second.stderr and f"pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        assert first.wait(timeout=60) == 0
    # The first run's output is intact and complete.
    status = json.loads(run_cli("status", "--json", *args[2:], cwd=tmp_path).stdout)
    assert {s["name"]: s["up_to_date"] for s in status["stages"]}["slow"] is True


@pytest.mark.parametrize("override, message", [
    ("total.scal=2", "total.scal: unknown key. Did you mean total.scale?"),
    ("total.inner.ofset=1", "total.inner.ofset: unknown key. Did you mean total.inner.offset?"),
    ("totl.scale=2", "totl: unknown params section"),
    ("total.scale=abc", "total.scale: expected a number, got 'abc'"),
    ("total.scale=0", "total.scale: 0.0 is out of range; it must be > 0.0"),
    ("numbers.count=2.5", "numbers.count: expected an integer, got 2.5"),
    ("numbers.mode=sqare", "Did you mean 'square'?"),
    ("total.weights=[]", "total.weights: needs at least 1 item(s)"),
    ("total.weights=[1, -1]", "total.weights[1]: -1.0 is out of range"),
    ("total.scale", "expected KEY=VALUE"),
    ("total.scale.x=1", "total.scale: expected a number, got {'x': 1}"),
])
def test_bad_params_are_rejected_before_anything_runs(tmp_path, override, message):
    out = run_cli("run", "--graph", TOY, "--cache-dir", str(tmp_path / "c"), "-S", override, cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "c").exists()  # nothing written


def test_bad_params_file_names_file_and_line(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("total:\n  scale: [1,\n")
    out = run_cli("status", "--graph", TOY, "--params", str(bad), cwd=tmp_path)
    assert out.returncode == 2 and str(bad) in out.stderr and "line" in out.stderr
    with pytest.raises(ParamsError, match="does not exist"):
        planner.resolve_params(load_graph(TOY), [tmp_path / "missing.yaml"])


def test_params_files_overlay_and_overrides_win(tmp_path, graph):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("total:\n  scale: 2\n  inner: {offset: 1, label: a}\n")
    b.write_text("total:\n  inner: {label: b}\n")
    params = planner.resolve_params(graph, [a, b], ["total.inner.offset=5"])
    assert (params["total"].scale, params["total"].inner.offset, params["total"].inner.label) == (2.0, 5.0, "b")


def test_cli_run_status_dag(tmp_path):
    c = ["--graph", TOY, "--cache-dir", str(tmp_path / "c")]
    st = json.loads(run_cli("status", "--json", *c, cwd=tmp_path).stdout)
    assert [s["up_to_date"] for s in st["stages"]] == [False] * 4
    assert set(st["stages"][0]) >= {"name", "key", "up_to_date", "out"}
    out = run_cli("run", "all", *c, "-S", "total.scale=2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "numbers" in out.stdout and "ran" in out.stdout
    st = json.loads(run_cli("status", "--json", *c, "-S", "total.scale=2", cwd=tmp_path).stdout)
    assert all(s["up_to_date"] for s in st["stages"])
    assert all(Path(s["out"], "manifest.json").is_file() for s in st["stages"])
    text = run_cli("status", *c, cwd=tmp_path).stdout
    assert "total.scale: 2.0 -> 1.0" in text
    dag = run_cli("dag", *c, cwd=tmp_path).stdout
    assert "└─► total" in dag and "◄ numbers" in dag
    again = run_cli("run", "all", *c, "-S", "total.scale=2", cwd=tmp_path)
    assert again.returncode == 0 and "ran" not in again.stdout and "reused" in again.stdout


def test_noop_commands_do_not_import_heavy_libraries(tmp_path):
    """status and a no-op run over the product's real graph must not import jax/flax/tensorflow."""
    code = (
        "import sys\n"
        "from pipeline.cli import main\n"
        f"main(['status', '--cache-dir', {str(tmp_path)!r}])\n"
        f"main(['run', 'all', '--dry-run', '--cache-dir', {str(tmp_path)!r}])\n"
        "heavy = sorted(m for m in ('jax', 'flax', 'tensorflow', 'sklearn', 'torch') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


# --- fan-out: one part per entry of a list param (the features of each backbone) -----------------

@dataclasses.dataclass(frozen=True)
class Pick:
    name: Union[str, tuple[str, ...]] = spec("a", min_len=1)  # as backbone.name


def _fan_graph(log: Path):
    from pipeline.graph import Graph
    from pipeline.stage import Stage

    def parts_run(ctx):
        name = ctx.params["pick"].name
        with log.open("a") as f:
            f.write(f"part {name}\n")
        (ctx.out_dir / "value.json").write_text(json.dumps(name))
        return {"name": name}

    def join_run(ctx):
        names = [json.loads((d / "value.json").read_text()) for d in ctx.input_parts["part"]]
        first = json.loads((ctx.inputs["part"] / "value.json").read_text())
        (ctx.out_dir / "joined.json").write_text(json.dumps({"parts": names, "first": first}))
        return None

    def fan_out(sections):
        name = sections["pick"].name
        return [{"pick": dataclasses.replace(sections["pick"], name=n)}
                for n in ((name,) if isinstance(name, str) else name)]

    return Graph([Stage("part", parts_run, sections=("pick",), schemas={"pick": Pick}, fan_out=fan_out),
                  Stage("join", join_run, deps=("part",))])


def test_fan_out_caches_each_part_by_its_own_key(tmp_path):
    log = tmp_path / "runs.log"
    graph = _fan_graph(log)
    root = tmp_path / "cache"

    def run(*overrides):
        params = planner.resolve_params(graph, [], overrides)
        results = runner.execute(graph, params, root, ["join"], QuietReporter())
        plans = planner.plan(graph, params, root)
        joined = json.loads((plans["join"].out / "joined.json").read_text())
        return [(r.name, r.action) for r in results], joined, plans

    single, joined, plans = run()
    assert single == [("part", "ran"), ("join", "ran")] and joined == {"parts": ["a"], "first": "a"}
    key_a, join_a = plans["part"].key, plans["join"].key
    # A one-entry list is the plain value: same keys all the way down, nothing reruns.
    again, _, plans = run("pick.name=[a]")
    assert again == [("part", "reused"), ("join", "reused")] and plans["join"].key == join_a
    # Adding an entry costs one part; the old part is reused by its own key.
    added, joined, plans = run("pick.name=[a,b]")
    assert added == [("part", "reused"), ("part", "ran"), ("join", "ran")]
    assert joined == {"parts": ["a", "b"], "first": "a"}
    assert [p.key for p in plans["part"].parts][0] == key_a and plans["part"].up_to_date
    # Order matters downstream (column order) but not for the parts' caches.
    swapped, joined, plans = run("pick.name=[b,a]")
    assert swapped == [("part", "reused"), ("part", "reused"), ("join", "ran")]
    assert joined == {"parts": ["b", "a"], "first": "b"}
    # Removing one costs nothing upstream.
    removed, _, _ = run("pick.name=a")
    assert removed == [("part", "reused"), ("join", "reused")]
    assert log.read_text().splitlines() == ["part a", "part b"]
    status = planner.plan(graph, planner.resolve_params(graph, [], ["pick.name=[a,c]"]), root)["part"]
    assert not status.up_to_date and status.parts[0].up_to_date and not status.parts[1].up_to_date
    assert any(r.startswith("c: ") for r in status.reasons)
