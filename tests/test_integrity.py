"""Every published output is whole or treated as missing, on the engine's toy graph (no jax).

A damaged output (truncated, or changed at the same size) is reported by `status` as damaged,
rerun by the next `run`, and refused by a reader with a sentence naming the fix; a killed run,
at any file-system event of a seeded set (a manifest half-written among them), leaves nothing
that looks complete, and the run after it ends with the same bytes as an uninterrupted run. The
same with the real stages lives in `test_faults.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline import cache, publish
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
        publish.local_copy(root, "numbers", f.parent.name)
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
    from pipeline.planner import StagePlan

    p = StagePlan("x", "k", {}, {}, None, False, Path("."), ["missing: never run"])
    assert p.describe() == "missing"
    q = StagePlan("x", "k", {}, {}, None, False, Path("."), ["a: missing: never run", "b: missing: never run"])
    assert q.describe() == "missing"
    d = StagePlan("x", "k", {}, {}, None, False, Path("."), ["lite0: damaged: f.npy is 1 bytes, 2 written"])
    assert d.state == "damaged" and d.describe() == "damaged: lite0: f.npy is 1 bytes, 2 written"


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


# --- the probe memo and the converted-weights cache: damage means a refit / a reconversion -------

def _flipper(needle: bytes):
    """Damage that flips one bit inside `needle` (an array's bytes) where it lies in the file."""
    def flip(path: Path) -> None:
        b = bytearray(path.read_bytes())
        b[b.index(needle) + len(needle) // 2] ^= 0x10
        path.write_bytes(bytes(b))
    return flip


def test_damaged_probe_memo_is_refit_not_read(tmp_path):
    import numpy as np

    from pipeline.heads import memo

    result = {"W": np.arange(12.0).reshape(3, 4), "b": np.zeros(3), "train_only": (np.ones((3, 4)), np.ones(3)),
              "mean": None, "scale": None, "standardize": False, "chosen": {"C": 1.0},
              "plain": {"W": np.ones((3, 4)), "b": np.zeros(3), "mean": np.zeros(4), "scale": np.ones(4),
                        "C": 1.0, "select": "cv"}}
    path = tmp_path / "memo.npz"
    for damage in (lambda p: p.write_bytes(p.read_bytes()[:200]), _flipper(result["W"].tobytes())):
        memo._save(path, result)
        assert memo._load(path) is not None
        damage(path)
        assert memo._load(path) is None   # the zip's CRC-32 per member catches a flipped bit


def test_damaged_converted_weights_are_converted_again(tmp_path):
    import numpy as np

    from pipeline.models import converted
    from pipeline.models.spec import BackboneSpec, WeightSource

    spec = BackboneSpec(name="npz_test", family="test", config={}, input_size=32, resize_size=36,
                        resize_method="bilinear", normalization="minus_one_one", feature_dim=4,
                        feature_layer="test", weights=WeightSource("none", "pkg://none/none", "sha256:0",
                                                                   "pth", "test only"))
    kernel = np.arange(64, dtype=np.float32).reshape(4, 16)
    params = {"features": {"conv": {"kernel": kernel}}, "head": {"bias": np.zeros(16, np.float32)}}
    path = tmp_path / "converted.npz"
    for damage in (lambda p: p.write_bytes(p.read_bytes()[:300]), _flipper(kernel.tobytes())):
        converted.save(path, params, spec)
        assert converted.load(path, spec) is not None
        damage(path)
        assert converted.load(path, spec) is None and not path.exists()


# --- symlink loops, decompression-bomb warnings, a full disk -------------------------------------

def _loopy(root: Path) -> Path:
    photos = root / "photos"
    (photos / "cats").mkdir(parents=True)
    (photos / "cats" / "a.jpg").write_bytes(b"not decoded here")
    os.symlink("self", photos / "cats" / "self")                       # a link to itself
    os.symlink(photos / "cats" / "two", photos / "cats" / "one")       # one -> two -> one
    os.symlink(photos / "cats" / "one", photos / "cats" / "two")
    os.symlink(photos, photos / "cats" / "up")                          # a folder loop: followed once
    os.symlink(photos / "gone", photos / "cats" / "broken.jpg")        # a link to nothing
    return photos


def test_symlink_loops_in_a_photo_folder_are_skipped_with_a_reason(tmp_path):
    from pipeline.sources import scan_folder

    scan = scan_folder(_loopy(tmp_path))
    assert [f[0] for f in scan.files[None]] == ["cats/a.jpg"]
    assert sorted((rel, kind) for rel, kind, _ in scan.ignored) == [
        ("cats/broken.jpg", "broken_link"), ("cats/one", "symlink_loop"), ("cats/self", "symlink_loop"),
        ("cats/two", "symlink_loop")]
    st = cli("status", "--params", "/dev/null", "-S", "data.source=folder", "-S", f"data.path={tmp_path / 'photos'}",
             "--cache-dir", str(tmp_path / "c"))
    assert st.returncode == 0 and "Traceback" not in st.stderr and "data" in st.stdout, st.stderr


def test_predict_names_a_loop_as_a_loop(tmp_path):
    from pipeline.predict.inputs import expand

    photos = _loopy(tmp_path)
    files, bad = expand([str(photos / "cats" / "self"), str(photos), str(tmp_path / "absent.jpg")])
    assert [f.name for f in files] == ["a.jpg"]
    kinds = {Path(b.file).name: b.kind for b in bad}
    assert kinds == {"self": "symlink_loop", "one": "symlink_loop", "two": "symlink_loop",
                     "broken.jpg": "broken_link", "absent.jpg": "missing"}


def test_decompression_bomb_warning_does_not_reach_stderr(tmp_path):
    """An image over PIL's pixel limit is refused by decode_image with a reason; PIL's own
    warning used to be printed to the terminal as well."""
    import subprocess
    import sys

    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("1", (10_000, 9_500)).save(big)      # 95 M pixels: over the limit, a small file
    code = ("from pipeline import images\n"
            f"try:\n    images.decode_image({str(big)!r})\n"
            "except images.ImageDecodeError as e:\n    print(e.kind)\n")
    out = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert out.stdout.strip() == "too_large" and "DecompressionBomb" not in out.stderr, out.stderr


def test_a_full_disk_is_one_sentence(tmp_path, capsys, monkeypatch):
    import errno

    from pipeline import cli as cli_mod

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "c" / "features" / "k.partial" / "x.npy"))

    monkeypatch.setitem(cli_mod.COMMANDS, "dag", full)
    assert cli_mod.main(["dag"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x.npy" in err and "the disk is full" in err and "Traceback" not in err
