"""A cache on ``gs://``, for real: a GCS emulator on loopback, gcsfs pointed at it.

`gcp-storage-emulator` (a test dependency) serves the GCS JSON API on 127.0.0.1; gcsfs finds it
through ``STORAGE_EMULATOR_HOST``, the same variable Google's clients read. The toy graph runs
through the CLI against ``gs://bucket/...``: outputs are published there, read back, reused, a
failed or killed stage leaves nothing complete, and a multi-process run hands its shards over
through the bucket.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

# find_spec, not import: gcsfs reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT when imported (fixture below).
for _module, _dist in (("gcsfs", "gcsfs"), ("gcp_storage_emulator", "gcp-storage-emulator")):
    if importlib.util.find_spec(_module) is None:
        pytest.skip(f"gs:// tests need {_dist} (the project's test extra)", allow_module_level=True)

from pipeline import folders, planner, publish, runner, storage  # noqa: E402
from pipeline.graph import load_graph  # noqa: E402
from pipeline.progress import QuietReporter  # noqa: E402
from tests.stage_helpers import wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOY = "tests.toy_graph"
BUCKET = "pipeline-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """An in-memory GCS emulator with one bucket; this process and its children use it."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("emulator") / "emulator.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                             "--port", str(port), "--in-memory", "--default-bucket", BUCKET, "-q"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            with urllib.request.urlopen(url + "/", timeout=1) as r:
                if r.read() == b"OK":
                    break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the GCS emulator did not start (see {log.name})")
            time.sleep(0.1)
    env = {
        "STORAGE_EMULATOR_HOST": url,       # gcsfs and google-cloud-storage talk to the emulator
        "FSSPEC_GCS_TOKEN": "anon",         # no credentials to look for
        # gcsfs asks a gRPC API whether a bucket is zonal; the emulator has only the JSON API.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
    if "gcsfs" in sys.modules and os.environ.get("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT") != "false":
        pytest.skip("gcsfs was imported before this fixture with its zonal-bucket probe on, which "
                    "the emulator cannot answer; run with GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false")
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    import fsspec.config

    # fsspec read FSSPEC_* variables when it was imported, possibly before this fixture.
    mp.setitem(fsspec.config.conf, "gcs", {"token": "anon"})
    storage._filesystem.cache_clear()
    yield env
    mp.undo()
    storage._filesystem.cache_clear()
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


_counter = iter(range(10_000))


@pytest.fixture()
def root(gcs) -> str:
    """A fresh cache root in the bucket for each test."""
    return f"gs://{BUCKET}/t{next(_counter)}-{os.getpid()}/cache"


def run_cli(*args: str, cwd: Path, env_extra: dict | None = None, timeout: float = 90
            ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def bucket_files(url: str) -> dict[str, int]:
    return {f["path"]: f["size"] for f in folders.list_files(url)}


# --- the file API --------------------------------------------------------------------------------

def test_paths_files_and_folders_round_trip(root, tmp_path):
    p = storage.as_path(root + "/report/report.html")
    assert str(p) == root + "/report/report.html" and storage.is_remote(p)
    assert isinstance(storage.as_path("cache"), Path)       # local stays pathlib, no epath import
    # A report-like file written and read back through the epath API (what stages and the
    # report use), and bytes through the storage helpers.
    page = "<html><body>ünïcode ✓</body></html>"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(page)
    assert storage.as_path(root + "/report/report.html").read_text() == page
    png = bytes(range(256)) * 40
    storage.write_bytes(root + "/report/assets/plot.png", png)
    assert (p.parent / "assets" / "plot.png").read_bytes() == png
    assert bucket_files(root + "/report") == {"report.html": len(page.encode()),
                                             "assets/plot.png": len(png)}
    # Folders up and down, with sizes; an empty file survives the trip.
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "x.npy").write_bytes(b"\x93NUMPY" + b"0" * 1000)
    (src / "empty").write_bytes(b"")
    files = folders.list_files(src)
    folders.upload(src, root + "/tree", [f["path"] for f in files])
    assert folders.list_files(root + "/tree") == files
    folders.download(root + "/tree", tmp_path / "back", [f["path"] for f in files])
    assert folders.list_files(tmp_path / "back") == files
    assert (tmp_path / "back" / "a" / "b" / "x.npy").read_bytes() == (src / "a" / "b" / "x.npy").read_bytes()
    assert folders.list_dirs(root) == ["report", "tree"]
    folders.rmtree(root + "/tree")
    assert folders.list_files(root + "/tree") == [] and not storage.exists(root + "/tree/empty")
    folders.rmtree(root + "/never-existed")                 # absent is fine
    # Create-if-absent, the lock's primitive. Locally a second create is refused; on GCS that
    # is the ifGenerationMatch=0 precondition, which the emulator does not enforce, so only the
    # first create is checked there (the lock reads before it creates for that reason).
    assert storage.create_exclusive(root + "/once", b"1") and storage.read_text(root + "/once") == "1"
    assert storage.create_exclusive(tmp_path / "once", b"1")
    assert not storage.create_exclusive(tmp_path / "once", b"2")
    assert (tmp_path / "once").read_bytes() == b"1"


def test_remote_paths_import_no_tensorflow(root, tmp_path):
    """epath is steered to gcsfs for gs:// (not tf.io.gfile), so status stays light."""
    code = (
        "import sys\n"
        "from pipeline import storage\n"
        f"p = storage.as_path({root!r}) / 'x.txt'\n"
        "p.write_text('hi')\n"
        "assert p.read_text() == 'hi' and p.exists()\n"
        "from pipeline.cli import main\n"
        f"main(['status', '--graph', {TOY!r}, '--cache-dir', {root!r}])\n"
        "print('HEAVY', sorted(m for m in ('jax', 'tensorflow', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


# --- the engine on a gs:// root ------------------------------------------------------------------

def test_run_status_reuse_on_gcs(root, tmp_path):
    log = tmp_path / "runs.log"
    env = {"TOY_RUN_LOG": str(log)}
    c = ["--graph", TOY, "--cache-dir", root]
    st = json.loads(run_cli("status", "--json", *c, cwd=tmp_path).stdout)
    assert [s["state"] for s in st["stages"]] == ["missing"] * 4
    out = run_cli("run", "all", *c, "--local-dir", str(tmp_path / "local"), "-S", "total.scale=2",
                  cwd=tmp_path, env_extra=env)
    assert out.returncode == 0, out.stderr
    assert f"outputs under {root}" in out.stdout
    assert sorted(log.read_text().split()) == ["numbers", "slow", "total"]
    # Status from a fresh process reads the bucket: everything up to date.
    st = json.loads(run_cli("status", "--json", *c, "-S", "total.scale=2", cwd=tmp_path).stdout)
    assert all(s["up_to_date"] for s in st["stages"]), st
    plans = {s["name"]: s for s in st["stages"]}
    # What is in the bucket: every file the manifest lists, with its size, and the manifest.
    for name, s in plans.items():
        assert s["out"] == f"{root}/{name}/{s['key']}"
        manifest = json.loads(storage.read_text(s["out"] + "/manifest.json"))
        assert manifest["key"] == s["key"]
        listed = {f["path"]: f["size"] for f in manifest["files"]}
        assert bucket_files(s["out"]) == {**listed, "manifest.json": bucket_files(s["out"])["manifest.json"]}
    assert json.loads(storage.read_text(plans["total"]["out"] + "/total.json")) == {"total": 20.0}
    assert not [d for d in folders.list_dirs(root + "/total") if d.endswith(".partial")]
    assert not storage.exists(root + "/.lock")          # released
    latest = json.loads(storage.read_text(root + "/runs/latest.json"))
    assert latest["stages"]["total"] == {"key": plans["total"]["key"], "complete": True}
    # A rerun reuses everything; with a fresh local folder too (the bucket is what counts).
    again = run_cli("run", "all", *c, "--local-dir", str(tmp_path / "other"), "-S", "total.scale=2",
                    cwd=tmp_path, env_extra=env)
    assert again.returncode == 0 and "ran" not in again.stdout and "reused" in again.stdout
    # A changed param reruns only its stage; its input comes down from the bucket.
    third = run_cli("run", "total", *c, "--local-dir", str(tmp_path / "other"), "-S", "total.scale=3",
                    cwd=tmp_path, env_extra=env)
    assert third.returncode == 0, third.stderr
    assert sorted(log.read_text().split()) == ["numbers", "slow", "total", "total"]
    numbers_key = plans["numbers"]["key"]
    assert json.loads((tmp_path / "other" / "numbers" / numbers_key / "numbers.json").read_text()) == [0, 1, 2, 3, 4]
    st = json.loads(run_cli("status", "--json", *c, "-S", "total.scale=3", cwd=tmp_path).stdout)
    assert all(s["up_to_date"] for s in st["stages"] if s["name"] in ("numbers", "total"))
    text = run_cli("status", *c, "-S", "total.scale=5", cwd=tmp_path).stdout
    assert "total.scale: 3.0 -> 5.0" in text    # newest remote manifest explains staleness


def _execute(graph, root, local, *overrides, targets=("total",)):
    params = planner.resolve_params(graph, [], overrides)
    res = runner.execute(graph, params, root, targets, QuietReporter(), local_dir=local)
    return {r.name: r.action for r in res}


def test_failed_stage_leaves_nothing_complete_on_gcs(root, tmp_path):
    graph = load_graph(TOY)

    def boom(ctx):
        assert ctx.out_dir.is_relative_to(tmp_path / "local")      # stages write locally
        (ctx.out_dir / "half.json").write_text("{")
        raise RuntimeError("stage bug")

    graph.stages["total"] = dataclasses.replace(graph.stages["total"], run=boom)
    with pytest.raises(RuntimeError, match="stage bug"):
        _execute(graph, root, tmp_path / "local")
    plans = planner.plan(graph, planner.resolve_params(graph, [], []), root)
    assert plans["numbers"].up_to_date and not plans["total"].up_to_date
    assert plans["total"].state == "missing"
    assert folders.list_files(root + "/total") == []                 # nothing uploaded
    assert not (tmp_path / "local" / "total").exists() or \
        not any((tmp_path / "local" / "total").iterdir())            # staging discarded


def test_half_uploaded_output_is_not_complete_and_is_replaced(root, tmp_path):
    graph = load_graph(TOY)
    key = planner.plan(graph, planner.resolve_params(graph, [], []), root)["numbers"].key
    # What a host killed in the middle of an upload leaves: files, no manifest.
    storage.write_text(f"{root}/numbers/{key}/numbers.json", "[1, 2")
    storage.write_text(f"{root}/numbers/{key}/stray.bin", "x")
    plans = planner.plan(graph, planner.resolve_params(graph, [], []), root)
    assert not plans["numbers"].up_to_date and plans["numbers"].state == "missing"
    assert _execute(graph, root, tmp_path / "local", targets=("numbers",)) == {"numbers": "ran"}
    files = bucket_files(f"{root}/numbers/{key}")
    assert set(files) == {"numbers.json", "manifest.json"}       # the stray file is gone
    assert json.loads(storage.read_text(f"{root}/numbers/{key}/numbers.json")) == [0, 1, 2, 3, 4]


def test_local_copies_are_verified_against_the_manifest(root, tmp_path):
    graph = load_graph(TOY)
    local = tmp_path / "local"
    _execute(graph, root, local, targets=("numbers",))
    key = planner.plan(graph, planner.resolve_params(graph, [], []), root)["numbers"].key
    copy = publish.local_copy(root, "numbers", key, local)
    assert copy == local / "numbers" / key       # the staging folder became the local copy
    inode = (copy / "numbers.json").stat().st_ino
    assert publish.local_copy(root, "numbers", key, local) == copy
    assert (copy / "numbers.json").stat().st_ino == inode        # complete: reused, not fetched
    (copy / "numbers.json").write_text("[9")                     # damaged (size differs)
    publish.local_copy(root, "numbers", key, local)
    assert json.loads((copy / "numbers.json").read_text()) == [0, 1, 2, 3, 4]
    other = publish.local_copy(root, "numbers", key, tmp_path / "elsewhere")   # another host
    assert json.loads((other / "numbers.json").read_text()) == [0, 1, 2, 3, 4]
    with pytest.raises(FileNotFoundError):
        publish.local_copy(root, "numbers", "0" * 20, local)


def test_a_download_that_differs_from_its_digest_is_refused(root, tmp_path):
    """An object changed in the bucket after publication (same size) is caught by its sha256."""
    graph = load_graph(TOY)
    _execute(graph, root, tmp_path / "local", targets=("numbers",))
    key = planner.plan(graph, planner.resolve_params(graph, [], []), root)["numbers"].key
    obj = storage.join(root, "numbers", key, "numbers.json")
    good = storage.read_bytes(obj)
    storage.write_bytes(obj, good.replace(b"1", b"7"))
    with pytest.raises(OSError, match="numbers.json changed after it was written"):
        publish.local_copy(root, "numbers", key, tmp_path / "elsewhere")


def test_sigkill_mid_stage_then_rerun_resumes_on_gcs(root, tmp_path):
    local = tmp_path / "local"
    args = ["run", "slow", "--graph", TOY, "--cache-dir", root, "--local-dir", str(local),
            "-S", "slow.seconds=0.4", "-S", "slow.steps=8"]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert wait_for(lambda: len(list((local / "slow").glob("*.partial/step-*.json"))) >= 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert folders.list_files(root + "/slow") == []         # nothing of slow in the bucket
    done_before = len(list((local / "slow").glob("*.partial/step-*.json")))
    holder = json.loads(storage.read_text(root + "/.lock"))  # the dead run's lock is left behind
    assert holder["pid"] == proc.pid and holder["host"] == socket.gethostname()
    out = run_cli(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "took over a stale lock" in out.stderr and str(proc.pid) in out.stderr
    st = {s["name"]: s for s in json.loads(run_cli("status", "--json", *args[2:6], "-S", "slow.seconds=0.4",
                                                   "-S", "slow.steps=8", cwd=tmp_path).stdout)["stages"]}
    manifest = json.loads(storage.read_text(st["slow"]["out"] + "/manifest.json"))
    assert manifest["summary"]["resumed_from"] == done_before >= 2
    assert sorted(f["path"] for f in manifest["files"] if f["path"].startswith("step-")) == \
        [f"step-{i:03d}.json" for i in range(8)]
    assert not storage.exists(root + "/.lock")


def test_lock_held_from_another_host_stops_the_run(root, tmp_path):
    storage.write_text(root + "/.lock", json.dumps({"pid": 4242, "host": "tpu-worker-7",
                                                    "command": "python -m pipeline run all",
                                                    "started": "2026-01-01 00:00:00"}))
    out = run_cli("run", "numbers", "--graph", TOY, "--cache-dir", root, "--local-dir",
                  str(tmp_path / "local"), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "in use by another run (pid 4242 on tpu-worker-7" in out.stderr
    assert f"gcloud storage rm {root}/.lock" in out.stderr
    assert folders.list_files(root + "/numbers") == []


def test_missing_bucket_is_a_clear_error(gcs, tmp_path):
    url = "gs://no-such-bucket/cache"
    st = run_cli("status", "--json", "--graph", TOY, "--cache-dir", url, cwd=tmp_path)
    assert st.returncode == 0 and not any(s["up_to_date"] for s in json.loads(st.stdout)["stages"])
    out = run_cli("run", "numbers", "--graph", TOY, "--cache-dir", url, "--local-dir",
                  str(tmp_path / "local"), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"cannot write to the cache {url}" in out.stderr and "bucket exists" in out.stderr


def test_unsupported_url_is_a_clear_error(tmp_path):
    out = run_cli("status", "--graph", TOY, "--cache-dir", "ftp://host/cache", cwd=tmp_path)
    assert out.returncode != 0 and "ftp:// is not supported" in out.stderr


def test_two_processes_share_shards_through_the_bucket(root, tmp_path):
    """Each process stages locally and uploads; process 0 gathers all before `finalize`."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "spread", "--graph", TOY, "--cache-dir", root,
         "--local-dir", str(tmp_path / f"host{i}"), "--coordinator", f"127.0.0.1:{port}",
         "--num-processes", "2", "--process-id", str(i), "--cpu-devices", "1", "-S", "numbers.count=7"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    (key,) = folders.list_dirs(root + "/spread")
    out = f"{root}/spread/{key}"
    manifest = json.loads(storage.read_text(out + "/manifest.json"))
    assert manifest["process_count"] == 2
    assert manifest["summary"] == {"parts": 2, "total": sum(range(7))}
    assert json.loads(storage.read_text(out + "/part-1.json")) == [1, 3, 5]
    assert set(bucket_files(out)) == {"part-0.json", "part-1.json", "total.json", "manifest.json"}
    # Process 1's staging is gone after publication; its input came down to its own host.
    assert not list((tmp_path / "host1" / "spread").glob("*"))
    assert list((tmp_path / "host1" / "numbers").glob("*/numbers.json"))


# --- the real stages on a gs:// root -------------------------------------------------------------

def _real_graph():
    """The product's data, features and report stages; features embeds with the tiny test CNN
    (the registry's backbones take tens of seconds to compile here)."""
    pytest.importorskip("jax")
    from pipeline.graph import Graph
    from stages import data as data_stage
    from stages import features
    from stages import report
    from tests import tiny_backbone

    def run_features(ctx):
        return features.extract(ctx, tiny_backbone.make())

    return Graph([data_stage.STAGE,
                  dataclasses.replace(features.STAGE, run=run_features),
                  dataclasses.replace(report.STAGE, deps=("data", "features"))])


@pytest.mark.slow
def test_features_and_report_written_to_and_read_back_from_the_bucket(root, tmp_path):
    import numpy as np

    from pipeline.features.artifact import load_split
    from tests.test_features import write_photos

    write_photos(tmp_path / "photos", {"cat": 7, "dog": 6})
    graph = _real_graph()
    params = planner.resolve_params(graph, [], [f"data.source=folder", f"data.path={tmp_path / 'photos'}",
                                                "features.batch_size=4", "features.shard_size=4"])
    res = runner.execute(graph, params, root, ["report"], QuietReporter(), local_dir=tmp_path / "host")
    assert [r.action for r in res] == ["ran", "ran", "ran"]
    plans = planner.plan(graph, params, root)
    assert all(p.up_to_date for p in plans.values())
    # The same graph on a local cache: the bucket's features are the same arrays.
    runner.execute(graph, params, tmp_path / "local-cache", ["features"], QuietReporter())
    local_plans = planner.plan(graph, params, tmp_path / "local-cache")
    assert local_plans["features"].key == plans["features"].key
    fresh = publish.local_copy(root, "features", plans["features"].key, tmp_path / "another-host")
    for split in ("train", "val", "test"):
        got, want = load_split(fresh, split), load_split(local_plans["features"].out, split)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]
    # The report: in the bucket, read back through epath, and self-contained.
    report_dir = plans["report"].out
    page = (report_dir / "report.html").read_text()
    assert page.lower().startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert page == (tmp_path / "host" / "report" / plans["report"].key / "report.html").read_text()
    assert ">cat<" in page and ">dog<" in page          # the data section names the classes
    listed = json.loads((report_dir / "manifest.json").read_text())["files"]
    assert {"report.html", "report.md"} <= {f["path"] for f in listed}
    assert bucket_files(str(report_dir))["report.html"] == len(page.encode())
