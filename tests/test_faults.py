"""Fault injection on the real stages: SIGKILL a run at seeded file-system events, then rerun.

For each kind of stage output (sharded features, the trunk's sharded activations, the heads,
the report, and the exported folder), starting from a copy of `hostile_run`'s cache without that
output, a run is killed at seeded points among the events under that output's folder (always
including the middle of writing its manifest). After each kill, every published output must
verify (`cache.damage` with digests) and the output must not look complete; after a normal rerun
the cache must hold exactly the uninterrupted run's bytes (durations aside), with no partial or
temporary file left. By default the manifest point for each stage plus one seeded point among
the feature shards; ``pytest --thorough`` takes five points per stage.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline import cache
from tests.integrity_helpers import cli, kill_points, killed, leftovers, published


def _without(run, stage: str, dst: Path) -> Path:
    """A copy of the run's cache with `stage`'s complete output(s) removed."""
    shutil.copytree(run.root, dst, symlinks=True)
    for d in list((dst / stage).iterdir()):
        if cache.is_complete(dst, stage, d.name):
            shutil.rmtree(d)
    return dst


def _opts(run, root: Path) -> list[str]:
    return [*run.opts[:-1], str(root)]


@pytest.mark.parametrize("stage", ["features", "trunk", "heads", "report"])
def test_sigkill_a_stage_at_seeded_points_then_rerun_gives_the_same_bytes(stage, hostile_run, tmp_path, thorough):
    want = published(hostile_run.root)
    mine = [e for e in hostile_run.events if f"/{stage}/" in e]
    assert any(e.endswith("manifest.json") for e in mine), mine
    # Few points by default: the manifest half-written for every stage, and one seeded point
    # among the shards of the features stage (where a rerun resumes); --thorough: five each.
    points = kill_points(mine, 5 if thorough else (2 if stage == "features" else 1), seed=22)
    for at in points:
        root = _without(hostile_run, stage, tmp_path / f"kill-{at}")
        first = killed(f"{at}:/{stage}/", "run", stage, *_opts(hostile_run, root))
        assert first.returncode == -9, f"{mine[at - 1]}: not killed\n{first.stderr[-2000:]}"
        now = published(root)   # whatever is published verifies
        assert not any(k.startswith(f"{stage}/") for k in now), f"{stage} looks complete after a kill"
        again = cli("run", stage, *_opts(hostile_run, root))
        assert again.returncode == 0, again.stderr[-3000:]
        assert published(root) == want, f"after a kill at {mine[at - 1]}"
        assert not leftovers(root), leftovers(root)
        shutil.rmtree(root)


def test_sigkill_an_export_leaves_the_old_folder_or_none(hostile_run, tmp_path):
    out = tmp_path / "exported"
    first = killed("1:/exported", "export", "--out", str(out), "--no-check", *hostile_run.opts)
    assert first.returncode == -9, first.stderr[-2000:]   # killed just before the rename into place
    assert not out.exists()
    out.mkdir()
    (out / "labels.txt").write_text("an older export\n")
    forced = killed("1:/exported", "export", "--out", str(out), "--no-check", "--force", *hostile_run.opts)
    assert forced.returncode == -9
    assert (out / "labels.txt").read_text() == "an older export\n"   # the old folder, untouched
    done = cli("export", "--out", str(out), "--no-check", "--force", *hostile_run.opts)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "labels.txt").read_text() != "an older export\n"
    assert [p.name for p in tmp_path.iterdir()] == ["exported"], "a killed export's folder was left"
