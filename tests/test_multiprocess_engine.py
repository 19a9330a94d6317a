"""The engine across two real JAX processes on localhost (coordination service, gloo CPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, *extra: str) -> list[subprocess.CompletedProcess]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "spread", "--graph", "tests.toy_graph",
         "--cache-dir", str(tmp_path / "c"), "--coordinator", f"127.0.0.1:{port}",
         "--num-processes", "2", "--process-id", str(i), "--cpu-devices", "2", *extra],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=180)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def test_two_processes_each_do_a_part_and_process0_publishes(tmp_path):
    leader, follower = _launch(tmp_path, "-S", "numbers.count=7")
    assert leader.returncode == 0, leader.stderr
    assert follower.returncode == 0, follower.stderr
    (out,) = [p for p in (tmp_path / "c" / "spread").iterdir() if not p.name.endswith(".partial")]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["process_count"] == 2
    assert manifest["summary"] == {"parts": 2, "total": sum(range(7))}
    assert json.loads((out / "part-1.json").read_text()) == [1, 3, 5]
    assert "spread" in leader.stdout and follower.stdout == ""


def test_failure_on_one_process_stops_all_with_its_message(tmp_path):
    leader, follower = _launch(tmp_path, "-S", "spread.fail_on=1")
    assert follower.returncode != 0 and "disk full on process 1" in follower.stderr
    assert leader.returncode == 2
    assert "process 1 of 2 failed: RuntimeError: disk full on process 1" in leader.stderr
    assert not [p for p in (tmp_path / "c" / "spread").iterdir() if not p.name.endswith(".partial")]
