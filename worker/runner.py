"""The job runner: claims jobs, holds their leases, and hands each to its kind's handler.

One runner per host process (server or worker host). It LISTENs for new jobs and also
polls, renews the lease of each job it holds, and on shutdown lets in-flight units
finish and puts unfinished jobs back in the queue for the next runner. What a job does
is its handler's business (worker/derivatives_job.py, worker/bundle_job.py); whether a
failed job is retried is the queue's (core/queue.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence

import psycopg

from core import logs, metrics, tracing
from core.errors import Unavailable
from core.queue import JOBS_CHANNEL, JobQueue, retries, retry_delay
from core.records import JobKind
from worker.job import Interrupted, JobContext, JobHandler, PermanentFailure

log = logging.getLogger("derivatives.runner")
POLL_SECONDS = 1.0
REQUEUED = "runner shut down; re-queued"


class Runner:
    def __init__(self, queue: JobQueue, database_url: str, handlers: Sequence[JobHandler], max_jobs: int) -> None:
        self.queue = queue
        self.database_url = database_url  # for LISTEN, outside the pool
        self.handlers: dict[JobKind, JobHandler] = {h.kind: h for h in handlers}
        # Jobs held at once: more than the pool's processes, so a long bundle build (mostly I/O) does
        # not hold every derivative job back; the renderer's slots still bound the CPU work.
        self.max_jobs = max_jobs
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # Several renewals fit in one lease, so one slow renewal never loses it.
        self.renew_seconds = max(0.2, queue.lease_seconds / 6)
        self.stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="runner-listen"),
            asyncio.create_task(self._claim_loop(), name="runner-claim"),
        ]
        log.info("runner %s started: up to %d jobs at once", self.worker_id, self.max_jobs)

    async def stop(self, grace: float) -> None:
        """Stop claiming; let in-flight units finish for up to `grace` s; re-queue what is left."""
        self.stopping.set()
        self._wake.set()
        if self._running:
            _, pending = await asyncio.wait(self._running, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _listen(self) -> None:
        """Wake the claim loop on NOTIFY; a lost connection only means polling until it is back."""
        while not self.stopping.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {JOBS_CHANNEL}")
                    async for _ in conn.notifies():
                        self._wake.set()
            except (psycopg.Error, OSError) as exc:
                log.debug("job listener reconnecting: %s", exc)
                await asyncio.sleep(2)

    async def _claim_loop(self) -> None:
        last_sweep = 0.0
        while not self.stopping.is_set():
            now = asyncio.get_running_loop().time()
            if now - last_sweep >= self.queue.lease_seconds:
                last_sweep = now
                await self._give_up_exhausted()
            claimed = None
            if len(self._running) < self.max_jobs:
                try:
                    claimed = await self.queue.claim(self.worker_id, list(self.handlers))
                except Exception as exc:  # database away: keep trying, health reports it
                    log.warning("claim failed: %s", exc)
            if claimed is not None:
                ctx = JobContext(claimed, self.queue, self.worker_id, self.stopping.is_set)
                task = asyncio.create_task(self._run(ctx), name=f"job-{claimed.job_id}")
                self._running.add(task)
                task.add_done_callback(self._running.discard)
                task.add_done_callback(lambda _: self._wake.set())  # a free job slot: claim again now
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)

    async def _give_up_exhausted(self) -> None:
        """Jobs whose runner died on every attempt end as failed (and their handler is told)."""
        try:
            for job in await self.queue.give_up_exhausted():
                with logs.about(job=str(job.job_id)):
                    log.error("job %s: %s", job.job_id, job.error)
                    await self.handlers[job.kind].failed(job, None, job.error or "gave up")
        except Exception as exc:
            log.warning("sweeping exhausted jobs failed: %s", exc)

    # --- one job ------------------------------------------------------------------------------

    async def _run(self, ctx: JobContext) -> None:
        started = time.monotonic()
        # A first attempt's wait in the queue: its creation to this claim (both the database's clock).
        wait = (ctx.job.updated_at - ctx.job.created_at).total_seconds() if ctx.job.attempts == 1 else None
        metrics.job_claimed(ctx.job.kind, wait)
        with tracing.job_span(ctx.job):  # its log lines name the job; a span when tracing is on
            outcome = await self._attempt(ctx)
        metrics.job_ended(ctx.job.kind, outcome, time.monotonic() - started)

    async def _attempt(self, ctx: JobContext) -> metrics.JobOutcome:
        job = ctx.job
        log.info("job %s: %s attempt %d", job.job_id, job.kind, job.attempts)
        renewal = asyncio.create_task(self._renew(ctx))
        try:
            await self.handlers[job.kind].run(ctx)
            if ctx.lease_lost:
                return metrics.JobOutcome.LEASE_LOST
            if not ctx.complete:  # stopped early: the runner is shutting down
                raise Interrupted()
            await self.queue.finish(job.job_id, self.worker_id, done=ctx.done, new_failures=ctx.unreported())
            log.info("job %s: succeeded (%d failures)", job.job_id, len(ctx.failures))
            return metrics.JobOutcome.SUCCEEDED
        except Interrupted:
            if ctx.lease_lost:
                return metrics.JobOutcome.LEASE_LOST
            await self.queue.requeue(job.job_id, self.worker_id, reason=REQUEUED)
            log.info("job %s: re-queued at %d/%d on shutdown", job.job_id, ctx.done, job.total)
            return metrics.JobOutcome.REQUEUED
        except Exception as exc:
            while isinstance(exc, ExceptionGroup):
                exc = exc.exceptions[0]
            return await self._failed(ctx, exc)
        finally:
            renewal.cancel()

    async def _failed(self, ctx: JobContext, exc: Exception) -> metrics.JobOutcome:
        job = ctx.job
        permanent = isinstance(exc, PermanentFailure)
        reason = str(exc) if isinstance(exc, Unavailable | PermanentFailure) else f"{type(exc).__name__}: {exc}"
        reason = reason.splitlines()[0][:300] if reason.strip() else type(exc).__name__
        tracing.failed(reason)
        try:
            if retries(job, permanent):
                log.warning(
                    "job %s: attempt %d failed (%s); retry in %.0fs",
                    job.job_id,
                    job.attempts,
                    reason,
                    retry_delay(job.attempts),
                )
                await self.queue.retry(job, self.worker_id, reason=reason)
                return metrics.JobOutcome.RETRIED
            log.error("job %s: failed: %s", job.job_id, reason, exc_info=None if permanent else exc)
            # The handler first (a bundle's error is fenced by this runner's ownership of the job), then the job.
            await self.handlers[job.kind].failed(job, self.worker_id, reason)
            await self.queue.fail(
                job.job_id, self.worker_id, reason=reason, done=ctx.done, new_failures=ctx.unreported()
            )
            return metrics.JobOutcome.FAILED
        except Exception as again:  # the lease runs out and another runner retries it
            log.error("job %s: could not record failure: %s", job.job_id, again)
            return metrics.JobOutcome.RETRIED

    async def _renew(self, ctx: JobContext) -> None:
        while True:
            await asyncio.sleep(self.renew_seconds)
            try:
                if not await self.queue.renew(ctx.job_id, self.worker_id):
                    log.warning("job %s: lease lost to another runner", ctx.job_id)
                    ctx.lease_lost = True
                    return
            except Exception as exc:
                log.warning("job %s: heartbeat failed: %s", ctx.job_id, exc)
