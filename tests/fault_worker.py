"""Run one `python -m pipeline ...` command and SIGKILL it at a chosen file-system event.

``python -m tests.fault_worker KILL_AT[:SUBSTRING] [--count FILE] -- ARGS...``

Events are counted, in order, over every ``os.replace`` (a shard, an output, a publish, a
temporary file becoming its real name), every `pipeline.storage.write_bytes` (manifests,
``runs/latest.json``, memos) and every `pipeline.folders.exchange` (an export replacing a folder). At event number KILL_AT (1-based) the process kills itself with
SIGKILL: before the rename for ``os.replace``; after writing only the first half of the bytes to
the temporary file for ``write_bytes``, i.e. in the middle of writing a manifest. With
``:SUBSTRING`` only events whose label (``replace PATH`` / ``write PATH``) contains it count, so a
point can be named within one stage's writes (``3:/heads/``). KILL_AT 0 never kills; with ``--count FILE`` the number of events (and their labels) is written to FILE at exit,
so a test can pick seeded kill points over an uninterrupted run.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys


def main(argv: list[str]) -> int:
    at, _, only = argv[0].partition(":")
    kill_at = int(at)
    rest = argv[1:]
    count_file = None
    if rest[:1] == ["--count"]:
        count_file, rest = rest[1], rest[2:]
    if rest[:1] == ["--"]:
        rest = rest[1:]

    from pipeline import folders, storage

    events: list[str] = []
    counted = [0]

    def event(label: str) -> bool:
        events.append(label)
        if only and only not in label:
            return False
        counted[0] += 1
        return counted[0] == kill_at

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    real_replace = os.replace

    def replace(src, dst, *a, **kw):
        if event(f"replace {os.fsdecode(dst)}"):
            die()
        return real_replace(src, dst, *a, **kw)

    real_write = storage.write_bytes

    def write_bytes(path, data):
        if event(f"write {os.fspath(path)}") and not storage.is_remote(path):
            from pathlib import Path

            p = Path(path)
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p.with_name(f".{p.name}.{os.getpid()}.tmp"), "wb") as f:
                f.write(data[: len(data) // 2])   # what a kill mid-write leaves
            die()
        return real_write(path, data)

    real_exchange = folders.exchange

    def exchange(a, b):
        if event(f"exchange {os.fspath(b)}"):
            die()
        return real_exchange(a, b)

    os.replace = replace
    storage.write_bytes = write_bytes
    folders.exchange = exchange
    if count_file:
        atexit.register(lambda: open(count_file, "w").write(json.dumps(events)))
    from pipeline.cli import main as cli_main

    return cli_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
