"""Shared by the integrity tests: what a cache has published, checked; kill a command at a point."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from pipeline import cache

ROOT = Path(__file__).resolve().parents[1]


def published(root: Path) -> dict[str, str]:
    """``stage/path`` -> content digest of every file every complete output lists (keys left
    out, so two caches built by the same params compare equal); asserts every output verifies.

    A JSON file's digest leaves out the wall-clock durations it records (any ``seconds`` key):
    the heads and inspect stages time their parts, and no two runs take the same time. The
    report's pages likewise leave out their timing section (the report times itself).
    """
    out: dict[str, str] = {}
    for stage_dir in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        for d in sorted(stage_dir.iterdir()):
            if d.name.endswith(cache.PARTIAL_SUFFIX) or not cache.is_complete(root, stage_dir.name, d.name):
                continue
            why = cache.damage(root, stage_dir.name, d.name, digests=True)
            assert why is None, f"{d}: {why}"
            for f in cache.read_manifest(d)["files"]:
                digest = f["sha256"]
                if f["path"].endswith(".json"):
                    digest = _untimed(d / f["path"])
                elif stage_dir.name == "report" and f["path"] in ("report.html", "report.md"):
                    digest = _untimed_report(d / f["path"])
                out[f"{stage_dir.name}/{f['path']}"] = digest
    return out


def _untimed_report(path: Path) -> str:
    import hashlib
    import re

    text = path.read_text(encoding="utf-8")
    if path.suffix == ".html":
        text = re.sub(r'<section id="timing".*?</section>', "", text, flags=re.S)
    else:
        text = text.split('<a id="timing"></a>')[0]
    return "page:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _untimed(path: Path) -> str:
    import hashlib

    def drop(v):
        if isinstance(v, dict):
            return {k: drop(x) for k, x in v.items() if k != "seconds"}
        if isinstance(v, list):
            return [drop(x) for x in v]
        return v

    text = json.dumps(drop(json.loads(path.read_text())), sort_keys=True)
    return "json:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def leftovers(root: Path) -> list[str]:
    """Partial, replaced or temporary folders and files a finished run should not leave."""
    bad = []
    for p in Path(root).rglob("*"):
        n = p.name
        if n.endswith(cache.PARTIAL_SUFFIX) or ".old-" in n or (n.startswith(".") and n.endswith(".tmp")):
            bad.append(str(p.relative_to(root)))
    return bad


def cli(*args: str, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def killed(kill_at: int | str, *args: str, count: Path | None = None, cwd: Path = ROOT,
           timeout: float = 600) -> subprocess.CompletedProcess:
    """The command run by `tests.fault_worker`, SIGKILLed at event `kill_at` (0: never;
    ``"3:/heads/"``: the third event whose path holds ``/heads/``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    extra = ["--count", str(count)] if count else []
    return subprocess.run([sys.executable, "-m", "tests.fault_worker", str(kill_at), *extra, "--", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def kill_points(events: list[str], n: int, seed: int) -> list[int]:
    """`n` seeded event numbers (1-based) of `events`, always including the first manifest write."""
    manifest = [i + 1 for i, e in enumerate(events) if e.startswith("write") and e.endswith("manifest.json")]
    rng = random.Random(seed)
    others = [i for i in range(1, len(events) + 1) if i not in manifest[:1]]
    picks = manifest[:1] + rng.sample(others, min(max(n - 1, 0), len(others)))
    return sorted(picks)


def count_events(path: Path) -> list[str]:
    return json.loads(Path(path).read_text())
