"""What a job handler gets from the runner, and what it may raise.

A handler (one per job kind: worker/derivatives_job.py, worker/bundle_job.py) runs one
claimed job. It counts its units in `JobContext.done`, adds per-asset failures to
`JobContext.failures`, calls `report()` as it goes, and returns when every unit is done
or `should_stop()` says to stop. The runner owns the lease and the job's final state.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Protocol

from core.queue import JobQueue
from core.records import AssetFailure, Job, JobKind, Stage

# Seconds between progress writes of one job: 4 a second reads as live to a person (the anchor
# polled every 2 s), and each write is fanned out to every watcher, a thousand of them perhaps.
PROGRESS_INTERVAL = 0.25


class PermanentFailure(Exception):
    """Retrying cannot help (a member cannot be rendered, the work changed): fail the job now."""


class Interrupted(Exception):
    """The lease was lost or the runner is stopping: stop, and leave the job to the next owner."""


class JobContext:
    """One claimed job while it runs: its progress, its failures, its lease."""

    def __init__(self, job: Job, queue: JobQueue, worker_id: str, stopping: Callable[[], bool]) -> None:
        self.job = job
        self.queue = queue
        self.worker_id = worker_id
        self._stopping = stopping
        self.done = 0
        self.failures: list[AssetFailure] = []
        self.lease_lost = False
        self.stage = Stage.RUNNING
        self._reported_failures = 0  # failures[:_reported_failures] are in the jobs row already
        self._reported_at = 0.0
        self._lock = asyncio.Lock()

    @property
    def job_id(self) -> uuid.UUID:
        return self.job.job_id

    @property
    def complete(self) -> bool:
        return self.done >= self.job.total

    def should_stop(self) -> bool:
        return self.lease_lost or self._stopping()

    def unreported(self) -> list[AssetFailure]:
        """Failures not yet written, marked as written (each progress write appends its share)."""
        new = self.failures[self._reported_failures :]
        self._reported_failures = len(self.failures)
        return new

    async def report(self, stage: Stage = Stage.RUNNING, *, force: bool = False) -> None:
        """Record `done` (handlers count units themselves, synchronously: no increment is lost), at
        most every PROGRESS_INTERVAL unless the stage changes, the job is complete, or it is forced.

        Writes of one job go one at a time, in call order.
        """
        async with self._lock:
            now = asyncio.get_running_loop().time()
            recent = now - self._reported_at < PROGRESS_INTERVAL
            if not force and stage == self.stage and recent and not self.complete:
                return
            self.stage, self._reported_at = stage, now
            written = await self.queue.progress(
                self.job_id,
                self.worker_id,
                done=self.done,
                total=self.job.total,
                stage=self.stage,
                new_failures=self.unreported(),
            )
            if not written:
                self.lease_lost = True


class JobHandler(Protocol):
    kind: JobKind

    async def run(self, ctx: JobContext) -> None:
        """Do the job's units; raise PermanentFailure, Interrupted, or anything else (retried)."""
        ...

    async def failed(self, job: Job, worker_id: str | None, reason: str) -> None:
        """The job failed for good (`worker_id` None: the queue gave it up after its runner died)."""
        ...
