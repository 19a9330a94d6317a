"""Every published output is whole or treated as missing, on the engine's toy graph (no jax).

A damaged output (truncated, or changed at the same size) is reported by `status` as damaged,
rerun by the next `run`, and refused by a reader with a sentence naming the fix; a killed run,
at any file-system event of a seeded set (a manifest half-written among them), leaves nothing
that looks complete, and the run after it ends with the same bytes as an uninterrupted run. The
same with the real stages lives in `test_faults.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import cache
from pipeline.errors import UserError
from tests.integrity_helpers import cli, count_events, kill_points, killed, leftovers, published

TOY = "tests.toy_graph"


def _toy(*args: str, cache_dir: Path) -> list[str]:
    return [*args, "--graph", TOY, "--params", "/dev/null", "--cache-dir", str(cache_dir)]


def _out(root: Path, stage: str) -> Path:
    (d,) = [p for p in (root / stage).iterdir() if cache.is_complete(root, stage, p.name)]
    return d


def test_truncated_output_is_damaged_rerun_and_refused_by_readers(tmp_path):
    root = tmp_path / "c"
    assert cli(*_toy("run", "total", cache_dir=root)).returncode == 0
    good = published(root)
    f = _out(root, "numbers") / "numbers.json"
    size = f.stat().st_size
    f.write_bytes(f.read_bytes()[:5])
    st = cli(*_toy("status", cache_dir=root))
    assert f"✗ numbers" in st.stdout and f"damaged: numbers.json is 5 bytes, {size:,} written" in st.stdout
    # A reader refuses it and names the fix; it never reads the bytes.
    with pytest.raises(UserError, match=r"numbers\.json is 5 bytes.*python -m pipeline run numbers"):
        cache.local_copy(root, "numbers", f.parent.name)
    run = cli(*_toy("run", "total", cache_dir=root))
    assert run.returncode == 0, run.stderr
    assert "numbers      ran" in run.stdout and "total        reused" in run.stdout
    assert published(root) == good and not leftovers(root)


def test_same_size_change_is_found_by_verify_only(tmp_path):
    root = tmp_path / "c"
    assert cli(*_toy("run", "total", cache_dir=root)).returncode == 0
    good = published(root)
    f = _out(root, "total") / "total.json"
    f.write_bytes(f.read_bytes().replace(b"1", b"7"))   # same size, different bytes
    assert "up to date" in cli(*_toy("status", cache_dir=root)).stdout.splitlines()[1]
    st = json.loads(cli(*_toy("status", "--json", "--verify", cache_dir=root)).stdout)
    total = next(s for s in st["stages"] if s["name"] == "total")
    assert total["state"] == "damaged" and "total.json changed after it was written" in total["reasons"][0]
    assert "reused" in cli(*_toy("run", "total", cache_dir=root)).stdout.splitlines()[1]  # sizes only
    run = cli(*_toy("run", "total", "--verify", cache_dir=root))
    assert run.returncode == 0 and "total        ran" in run.stdout, run.stdout + run.stderr
    assert published(root) == good


def test_killed_forced_run_leaves_no_partial_after_the_next_run(tmp_path):
    root = tmp_path / "c"
    assert cli(*_toy("run", "total", cache_dir=root)).returncode == 0
    events_file = tmp_path / "events.json"
    assert killed(0, *_toy("run", "total", "--force", "total", cache_dir=root), count=events_file).returncode == 0
    events = count_events(events_file)
    # Kill the forced rerun just before its output is renamed into place.
    at = next(i + 1 for i, e in enumerate(events) if e.startswith("replace") and e.endswith(_out(root, "total").name))
    assert killed(at, *_toy("run", "total", "--force", "total", cache_dir=root)).returncode == -9
    assert list((root / "total").glob("*.partial"))
    assert cli(*_toy("run", "total", cache_dir=root)).returncode == 0   # not forced: reuses
    assert not leftovers(root)


def test_status_says_missing_once():
    from pipeline.runner import StagePlan

    p = StagePlan("x", "k", {}, {}, None, False, Path("."), ["missing: never run"])
    assert p.describe() == "missing"
    q = StagePlan("x", "k", {}, {}, None, False, Path("."), ["a: missing: never run", "b: missing: never run"])
    assert q.describe() == "missing"


def test_sigkill_at_seeded_points_then_rerun_gives_an_uninterrupted_runs_bytes(tmp_path, thorough):
    """The engine alone: publish, manifest, latest.json. Every event under --thorough."""
    clean = tmp_path / "clean"
    events_file = tmp_path / "events.json"
    assert killed(0, *_toy("run", "total", "spread", cache_dir=clean), count=events_file).returncode == 0
    want = published(clean)
    events = count_events(events_file)
    points = range(1, len(events) + 1) if thorough else kill_points(events, 3, seed=22)
    for at in points:
        root = tmp_path / f"k{at}"
        first = killed(at, *_toy("run", "total", "spread", cache_dir=root))
        assert first.returncode == -9, f"event {at} ({events[at - 1]}) did not kill: {first.stderr}"
        # Nothing half-written is taken for complete: what is published verifies.
        published(root)
        again = cli(*_toy("run", "total", "spread", cache_dir=root))
        assert again.returncode == 0, again.stderr
        assert published(root) == want, f"after a kill at {events[at - 1]}"
        assert not leftovers(root), f"after a kill at {events[at - 1]}: {leftovers(root)}"
