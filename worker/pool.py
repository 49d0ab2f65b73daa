"""The process pool for CPU work.

Spawned (never forked: gRPC and libvips threads do not survive fork) and warmed
before the gRPC server starts. processes x VIPS_CONCURRENCY ~= cores. A crashed
process (out of memory, a codec segfault) breaks the executor: it is replaced, and
the tasks it was running fail with WorkerCrashed.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from core.config import Settings
from worker import tasks

log = logging.getLogger("derivatives.pool")
T = TypeVar("T")


class WorkerCrashed(Exception):
    pass


class WorkerPool:
    def __init__(self, settings: Settings, processes: int) -> None:
        self.size = max(1, processes)
        self.vips_threads = max(1, (os.cpu_count() or 1) // self.size)
        self._env = settings.as_env()
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.size,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=tasks.init_process,
            initargs=(self._env, self.vips_threads),
        )

    def warm(self) -> None:
        """Start every process now (synchronously, before any server threads exist)."""
        pids = {f.result() for f in [self._executor.submit(tasks.warmup) for _ in range(self.size)]}
        log.info(
            "worker pool: %d processes x VIPS_CONCURRENCY=%d (pids %s)", self.size, self.vips_threads, sorted(pids)
        )

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        executor = self._executor
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except BrokenProcessPool:
            if self._executor is executor:
                log.error("a worker process died; replacing the pool")
                self._executor = self._new_executor()
            raise WorkerCrashed("the worker process died (out of memory or a decoder crash)") from None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
