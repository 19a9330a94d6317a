"""The first command a newcomer types: `python -m pipeline run all` with the shipped defaults.

Runs on the embedded demo sample in a fresh cache, with the network unreachable (a new, empty
network namespace when `unshare -n` works, as root here and in CI; else proxies pointed at a
closed port), no tfds data dir and an empty home folder: nothing may be downloaded. Then the
checks a user relies on: every stage ran, the report exists and shows the sample, and ``touch``
on a photo reruns nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "pipeline" / "sample"


def _offline_prefix() -> list[str]:
    """`unshare -n` (no network at all) where this user may make a network namespace."""
    exe = shutil.which("unshare")
    if exe and subprocess.run([exe, "-n", "true"], capture_output=True).returncode == 0:
        return [exe, "-n"]
    return []


def _offline_env(tmp: Path) -> dict[str, str]:
    # No proxy, and not the suite's shared compilation cache (tests/conftest.py): a newcomer's
    # first run compiles everything (measured: 203 s cold, 258 s on the shared cache, whose
    # programs are other shapes than the sample's).
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and not k.startswith("JAX_")}
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused
    env.update({"PYTHONPATH": str(ROOT), "HOME": str(tmp / "home"), "TFDS_DATA_DIR": str(tmp / "tfds"),
                "http_proxy": closed, "https_proxy": closed, "HTTP_PROXY": closed, "HTTPS_PROXY": closed,
                "no_proxy": "", "NO_PROXY": ""})
    (tmp / "home").mkdir(exist_ok=True)
    return env


def _cli(tmp: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*_offline_prefix(), sys.executable, "-m", "pipeline", *args,
                           "--cache-dir", str(tmp / "cache")],
                          cwd=ROOT, env=_offline_env(tmp), capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_run_all_with_shipped_defaults_offline_then_touch_reruns_nothing(tmp_path):
    from pipeline.graph import load_graph

    stages = list(load_graph().stages)
    first = _cli(tmp_path, "run", "all")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    status = json.loads(_cli(tmp_path, "status", "--json").stdout)
    by_name = {s["name"]: s for s in status["stages"]}
    assert set(by_name) == set(stages) and all(s["up_to_date"] for s in status["stages"]), status
    info = json.loads((Path(by_name["data"]["out"]) / "info.json").read_text())
    assert info["source"] == "sample" and info["num_classes"] == 37 and sum(info["splits"].values()) == 111
    page = (Path(by_name["report"]["out"]) / "report.html").read_text()
    assert len(page) > 100_000 and "111" in page
    assert len(page.encode()) <= 5_000_000  # the report travels: photos as JPEG at the size shown
    # The demo still makes its points: the attacks fool the head on every photo, and the ideal
    # images of the main recipe read as their class on other networks where the lesson's noise does not.
    attack = json.loads((Path(by_name["adversarial"]["out"]) / "metrics.json").read_text())
    assert attack["clean_target_rate"] == 0.0 and attack["images"] >= 4
    assert all(m["success_rate"] == 1.0 for m in attack["methods"].values()), attack["methods"]
    ideal_doc = json.loads((Path(by_name["ideal"]["out"]) / "ideal.json").read_text())
    for backbone, hits in ideal_doc["recipes"]["main"]["transfer"].items():
        assert hits["top1_rate"] > ideal_doc["recipes"]["lesson"]["transfer"][backbone]["top1_rate"], ideal_doc["recipes"]

    # touch: new mtime, same bytes -> same data key, nothing reruns.
    photo = next((SAMPLE / "pets" / "beagle").iterdir())
    st = photo.stat()
    try:
        os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
        again = json.loads(_cli(tmp_path, "status", "--json").stdout)
        assert all(s["up_to_date"] for s in again["stages"]), [s for s in again["stages"] if not s["up_to_date"]]
    finally:
        os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_sample_ships_with_its_licence_and_is_small():
    photos = sorted(SAMPLE.glob("pets/*/*.jpg"))
    assert len(photos) == 111 and len({p.parent.name for p in photos}) == 37
    assert sum(p.stat().st_size for p in photos) <= 8 * 2**20
    licence = (SAMPLE / "LICENSE").read_text()
    assert "CC BY-SA 4.0" in licence and "Parkhi" in licence
    from PIL import Image

    for p in photos[::10]:
        with Image.open(p) as im:
            assert max(im.size) <= 320 and im.format == "JPEG"


@pytest.mark.slow
def test_wheel_contains_the_sample_and_its_licence(tmp_path):
    # `pip wheel .` as a packager would run it (an isolated build; setuptools from the registry).
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        photos = [n for n in names if n.startswith("pipeline/sample/pets/") and n.endswith(".jpg")]
        assert len(photos) == 111 and "pipeline/sample/LICENSE" in names
        assert sum(z.getinfo(n).file_size for n in photos) <= 8 * 2**20
