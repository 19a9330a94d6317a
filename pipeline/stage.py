"""The stage contract: what a stage declares and what the runner hands it.

A stage module in `stages/` defines one module-level ``STAGE = Stage(...)``. It declares its
name, the stages it reads from, the params sections it reads, and a code version; the runner
hashes exactly those into the stage's cache key. Importing a stage module must stay cheap:
import jax, flax, tensorflow inside `run`, never at module level.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol


class Reporter(Protocol):
    """Progress sink the runner hands to a stage (rich progress bar, or silent in tests)."""

    def task(self, description: str, total: int | None = None, unit: str = "it") -> "TaskHandle": ...

    def log(self, message: str) -> None: ...


class TaskHandle(Protocol):
    def advance(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class StageContext:
    """Everything a stage may use. A stage reads nothing else (no params.yaml, no sys.argv).

    Attributes:
      name: the stage's name.
      key: the stage's cache key (hex).
      params: the declared params sections only, section name -> frozen dataclass.
      inputs: upstream stage name -> its published output folder (read-only).
      out_dir: the folder to write outputs into. It is private until `run` returns, then
        published by one atomic rename. For a resumable stage it survives a killed run, so the
        stage can find the shards it finished last time.
      cache_dir: the cache root, for caches shared across stages (converted weights).
      reporter: progress bars and log lines.
      process_index, process_count: this process's place in a multi-host run (0 and 1 alone).
      input_parts: upstream stage name -> all its output folders. One folder for an ordinary
        stage (the same as `inputs`); one per part for a fanned-out stage (the features of each
        backbone of a ``backbone.name`` list), in the order the list gives; `inputs` holds the
        first.
    """

    name: str
    key: str
    params: Mapping[str, Any]
    inputs: Mapping[str, Path]
    out_dir: Path
    cache_dir: Path
    reporter: Reporter
    process_index: int = 0
    process_count: int = 1
    input_parts: Mapping[str, tuple[Path, ...]] = dataclasses.field(default_factory=dict)

    def log(self, message: str) -> None:
        self.reporter.log(f"[{self.name}] {message}")


@dataclasses.dataclass(frozen=True)
class Stage:
    """A stage declaration.

    Attributes:
      name: unique stage name, also its cache sub-folder.
      run: ``run(ctx) -> summary``; the summary (a small JSON-able dict, or None) goes into the
        manifest and the end-of-run table.
      deps: names of upstream stages whose outputs this stage reads.
      sections: names of the params sections this stage reads; they and nothing else enter its key.
      version: the stage's code version; bump it when the outputs for the same inputs change.
      schemas: params sections this stage defines (section name -> frozen dataclass). A section
        may be read by several stages but is defined by exactly one.
      resumable: keep `out_dir` across killed runs (checkpointed shards) instead of wiping it.
      all_processes: in a multi-host run, every process runs this stage (the backbone pass and
        the gradient stages); otherwise only process 0 does.
      fingerprint: optional ``fingerprint(params, local_dir) -> str`` over the declared
        sections, for inputs that live outside params (the photos in a folder): it is hashed
        into the key, so adding a photo makes the stage stale. It must be cheap on a second call
        (stat the files; read only what changed, with a memo under ``local_dir``, the cache's
        local folder).
      finalize: optional ``finalize(ctx) -> summary`` run by process 0 alone after every process
        finished `run` (e.g. assembling the per-process feature shards); its summary replaces
        the one `run` returned. Single-process runs call it right after `run`.
      description: one line for `dag` and `status`.
      downstream_key: optional ``downstream_key(sections) -> str | None``: a key for the part of
        this stage's output that the stages naming it in `reads_part` read (the doctor's drop
        list), when that part depends on less than all of its params; None means its own key.
      reads_part: deps of which this stage reads only the part their `downstream_key` covers;
        its key hashes that part's key instead of theirs (heads reads the doctor's drop list
        alone, which is empty, whatever the doctor's params, while the doctor only reports).
      fan_out: optional ``fan_out(sections) -> [sections, ...]``: the stage runs once per entry
        (a "part"), each keyed and cached on its own as if the params had been that entry; the
        features stage uses it to run one backbone per part of a ``backbone.name`` list, so
        adding a backbone costs one pass and removing one costs nothing. Downstream stages see
        the first part in `StageContext.inputs` and every part in `StageContext.input_parts`.
    """

    name: str
    run: Callable[[StageContext], Mapping[str, Any] | None]
    deps: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    version: str = "1"
    schemas: Mapping[str, type] = dataclasses.field(default_factory=dict)
    resumable: bool = False
    all_processes: bool = False
    fingerprint: Callable[[Mapping[str, Any], Path], str] | None = None
    finalize: Callable[[StageContext], Mapping[str, Any] | None] | None = None
    description: str = ""
    downstream_key: Callable[[Mapping[str, Any]], str | None] | None = None
    reads_part: tuple[str, ...] = ()
    fan_out: Callable[[Mapping[str, Any]], list[Mapping[str, Any]]] | None = None
