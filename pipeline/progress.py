"""Progress reporters handed to stages: a rich one for the terminal, a quiet one for tests."""

from __future__ import annotations

import sys
import time
from typing import Any


class QuietReporter:
    """Collects log lines, draws nothing. Tests and library callers use it."""

    def __init__(self, echo: bool = False):
        self.lines: list[str] = []
        self.echo = echo

    def task(self, description: str, total: int | None = None, unit: str = "it") -> "_QuietTask":
        return _QuietTask()

    def log(self, message: str) -> None:
        self.lines.append(message)
        if self.echo:
            print(message, file=sys.stderr, flush=True)


class _QuietTask:
    def __init__(self) -> None:
        self.count = 0

    def advance(self, n: int = 1) -> None:
        self.count += n

    def close(self) -> None:
        pass


class RichReporter:
    """Live progress bars with rate and time left, and log lines above them (rich)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("left"),
            TimeRemainingColumn(), console=self.console, transient=False)
        self.progress.start()

    def task(self, description: str, total: int | None = None, unit: str = "it") -> "_RichTask":
        return _RichTask(self.progress, description, total, unit)

    def log(self, message: str) -> None:
        self.progress.console.print(message, markup=False, highlight=False)

    def close(self) -> None:
        self.progress.stop()


class _RichTask:
    def __init__(self, progress: Any, description: str, total: int | None, unit: str):
        self.progress, self.unit = progress, unit
        self.id = progress.add_task(description, total=total, rate="")
        self.start, self.done = time.perf_counter(), 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        self.progress.update(self.id, advance=n, rate=f"{rate:,.1f} {self.unit}/s")

    def close(self) -> None:
        self.progress.stop_task(self.id)
