"""Multi-process runs: start-up, barriers that carry failures, and who does what.

One host with one process is the common case and costs nothing here (no jax import). With
several processes (a TPU pod slice, several GPU hosts, or two CPU processes on localhost in the
tests) every process runs `python -m pipeline run ...`; then:

- `jax.distributed.initialize()` connects them (auto-detected on Cloud TPU; elsewhere from
  ``--coordinator/--num-processes/--process-id`` or the ``PIPELINE_COORDINATOR``,
  ``PIPELINE_NUM_PROCESSES``, ``PIPELINE_PROCESS_ID`` environment variables);
- process 0 alone decides what is stale, holds the cache lock, runs the cheap stages and
  publishes manifests; every process runs the stages marked ``all_processes`` (the backbone pass,
  the gradient stages) on its own slice of the inputs;
- barriers go through the coordination service's key-value store, and a process that fails posts
  its message there, so every other process stops with the failing process's message instead of
  waiting for a heartbeat time-out.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

from pipeline.errors import UserError

ENV_COORDINATOR = "PIPELINE_COORDINATOR"
ENV_NUM_PROCESSES = "PIPELINE_NUM_PROCESSES"
ENV_PROCESS_ID = "PIPELINE_PROCESS_ID"
ENV_LOCAL_DEVICES = "PIPELINE_CPU_DEVICES"


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """How this process was launched. ``mode`` is ``single``, ``explicit`` or ``auto`` (TPU)."""

    mode: str = "single"
    coordinator: str | None = None
    num_processes: int = 1
    process_id: int = 0
    cpu_devices: int | None = None   # virtual CPU devices per process (tests, CPU-only hosts)


def _on_cloud_tpu_pod() -> bool:
    # Multi-host TPU VMs export the worker list; one host alone needs no coordination.
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h.strip()]) > 1


def launch_config(coordinator: str | None = None, num_processes: int | None = None,
                  process_id: int | None = None, cpu_devices: int | None = None) -> LaunchConfig:
    """Flags win over environment variables; a Cloud TPU pod is detected by its environment."""
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR)
    n = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    pid = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    cpu = cpu_devices if cpu_devices is not None else _env_int(ENV_LOCAL_DEVICES)
    if coordinator or (n or 1) > 1:
        missing = [name for name, v in (("--coordinator", coordinator), ("--num-processes", n),
                                        ("--process-id", pid)) if v is None]
        if missing:
            raise UserError(f"a multi-process run needs {', '.join(missing)} (or the "
                            f"{ENV_COORDINATOR}/{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID} environment "
                            f"variables); on a Cloud TPU pod leave all three unset.")
        if not 0 <= pid < n:
            raise UserError(f"--process-id {pid} is out of range for --num-processes {n}.")
        return LaunchConfig("explicit", coordinator, n, pid, cpu)
    if _on_cloud_tpu_pod():
        return LaunchConfig("auto", cpu_devices=cpu)
    return LaunchConfig("single", cpu_devices=cpu)


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise UserError(f"environment variable {name}={v!r} must be an integer.") from None


def configure_cpu_devices(n: int | None) -> None:
    """Ask XLA for `n` virtual CPU devices. Must run before jax is imported."""
    if not n:
        return
    flag = f"--xla_force_host_platform_device_count={n}"
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()


class RemoteFailure(UserError):
    """Another process of the run failed; its message is this one's."""


class Coordinator:
    """Barriers and small broadcasts between the processes of one run.

    The single-process coordinator does nothing, so the runner has one code path.
    """

    def __init__(self, process_index: int = 0, process_count: int = 1, client: Any = None,
                 timeout_s: float = 24 * 3600):
        self.process_index, self.process_count = process_index, process_count
        self._client = client
        self._timeout_s = timeout_s

    @property
    def is_leader(self) -> bool:
        return self.process_index == 0

    def _key(self, name: str) -> str:
        return f"pipeline/{name}"

    def sync(self, name: str, error: str | None = None) -> None:
        """Wait until every process reached `name`; raise if any of them reports an error.

        Args:
          name: a barrier name unique within the run.
          error: this process's failure message, if it failed (posted, then raised here too).
        """
        if self.process_count == 1:
            if error:
                raise RemoteFailure(error)
            return
        base = self._key(f"{name}/")
        self._client.key_value_set(base + str(self.process_index), json.dumps({"error": error}))
        deadline = time.time() + self._timeout_s
        while True:
            entries = dict(self._client.key_value_dir_get(base))
            failures = []
            for k, v in entries.items():
                msg = json.loads(v).get("error")
                if msg:
                    failures.append((int(k.rsplit("/", 1)[-1]), msg))
            failures += self._failures_elsewhere()
            if failures:
                pid, msg = sorted(failures)[0]
                raise RemoteFailure(f"process {pid} of {self.process_count} failed: {msg}")
            if len(entries) >= self.process_count:
                return
            if time.time() > deadline:
                raise UserError(f"timed out waiting for all processes at {name!r}")
            time.sleep(0.05)

    def _failures_elsewhere(self) -> list[tuple[int, str]]:
        out = []
        for k, v in self._client.key_value_dir_get(self._key("failed/")):
            out.append((int(k.rsplit("/", 1)[-1]), v))
        return out

    def fail(self, message: str) -> None:
        """Tell every other process that this one failed (they stop at their next barrier)."""
        if self.process_count > 1:
            self._client.key_value_set(self._key(f"failed/{self.process_index}"), message)

    def broadcast(self, name: str, value: Any = None) -> Any:
        """Process 0's JSON-able `value`, returned on every process."""
        if self.process_count == 1:
            return value
        key = self._key(f"bcast/{name}")
        if self.is_leader:
            self._client.key_value_set(key, json.dumps(value))
            return value
        deadline = time.time() + self._timeout_s
        while True:
            try:
                return json.loads(self._client.key_value_try_get(key))
            except Exception:  # NOT_FOUND until process 0 has set it
                pass
            failures = self._failures_elsewhere()
            if failures:
                pid, msg = sorted(failures)[0]
                raise RemoteFailure(f"process {pid} of {self.process_count} failed: {msg}")
            if time.time() > deadline:
                raise UserError(f"timed out waiting for process 0's {name!r}")
            time.sleep(0.05)


def start(cfg: LaunchConfig) -> Coordinator:
    """Connect the processes (imports jax only for multi-process runs)."""
    configure_cpu_devices(cfg.cpu_devices)
    if cfg.mode == "single":
        return Coordinator()
    import jax

    if cfg.cpu_devices:
        # CPU-only multi-process runs (tests, CPU clusters) need cross-process collectives.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if cfg.mode == "explicit":
        jax.distributed.initialize(coordinator_address=cfg.coordinator,
                                   num_processes=cfg.num_processes, process_id=cfg.process_id)
    else:
        jax.distributed.initialize()
    from jax._src import distributed as _dist

    return Coordinator(jax.process_index(), jax.process_count(), _dist.global_state.client)
