"""The process pool for CPU work.

Spawned (never forked: gRPC and libvips threads do not survive fork) and warmed
before the gRPC server starts. processes x VIPS_CONCURRENCY ~= cores. Each process
caps its own address space (DERIVATIVES_WORKER_MEMORY, worker/tasks.py), so an
original that needs more fails with a reason and the process goes on. A process that
does crash (killed, a codec segfault) breaks the executor: it is replaced, and the
tasks it was running fail with WorkerCrashed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any, TypeVar

from core import logs, metrics
from core.config import Settings
from worker import tasks

log = logging.getLogger("derivatives.pool")
T = TypeVar("T")

# The environment pool processes start with, on top of ours (unless ours sets the name).
# glibc gives each thread that allocates its own malloc arena, up to 8 per core, each reserving
# 64 MiB of address space: under RLIMIT_AS that is room a decode cannot use (docs/limits-measured.md).
# glibc reads it once, at start-up: it must be in the environment the process is started with.
CHILD_ENV = {"MALLOC_ARENA_MAX": "2"}
_environ_lock = threading.Lock()


@contextmanager
def _environment(extra: dict[str, str]) -> Iterator[None]:
    """os.environ plus `extra` while a child is spawned (it inherits the C environment), then as it was."""
    with _environ_lock:
        added = {name: value for name, value in extra.items() if name not in os.environ}
        os.environ.update(added)
        try:
            yield
        finally:
            for name in added:
                os.environ.pop(name, None)


class _PoolProcess(SpawnProcess):
    def start(self) -> None:
        with _environment(CHILD_ENV):
            super().start()


class _PoolContext(SpawnContext):
    """The spawn context, its processes started with CHILD_ENV; this process's environment is left alone."""

    Process = _PoolProcess


class WorkerCrashed(Exception):
    pass


class WorkerPool:
    def __init__(self, settings: Settings, processes: int) -> None:
        self.size = max(1, processes)
        self.vips_threads = max(1, (os.cpu_count() or 1) // self.size)
        self._env = settings.as_env()
        self._executor = self._new_executor()
        self.replaced = 0  # times a crashed process broke the executor and it was replaced
        self._in_flight = 0  # tasks submitted and not yet ended: the processes busy, up to `size`
        metrics.pool_busy(0, self.size)

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.size,
            mp_context=_PoolContext(),
            initializer=tasks.init_process,
            initargs=(self._env, self.vips_threads),
        )

    def warm(self) -> list[int]:
        """Start every process now (synchronously, before any server threads exist); their pids."""
        pids = sorted({f.result() for f in [self._executor.submit(tasks.warmup) for _ in range(self.size)]})
        log.info("worker pool: %d processes x VIPS_CONCURRENCY=%d (pids %s)", self.size, self.vips_threads, pids)
        return pids

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        executor = self._executor
        self._count(+1)
        try:
            # The task's log lines in the pool process name what the caller's do (job, asset, trace).
            return await asyncio.get_running_loop().run_in_executor(executor, logs.run_carried, logs.carry(), fn, *args)
        except BrokenProcessPool:
            if self._executor is executor:
                log.error("a worker process died; replacing the pool")
                self._executor = self._new_executor()
                self.replaced += 1
                metrics.pool_crashed()
                metrics.sweep_dead_processes()  # the dead processes' RSS leaves the metrics
            raise WorkerCrashed("the worker process died (out of memory or a decoder crash)") from None
        finally:
            self._count(-1)

    def _count(self, delta: int) -> None:
        self._in_flight += delta
        metrics.pool_busy(self._in_flight, self.size)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        metrics.sweep_dead_processes()
