"""The job runner: claims jobs from Postgres and runs them on the process pool.

One runner per process (server or worker host). It LISTENs for new jobs and also
polls, heartbeats each job it holds, and on shutdown lets in-flight assets finish
and puts unfinished jobs back in the queue for the next runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg

from core.bundles import Bundles, MemberUnavailable
from core.config import Settings
from core.database import Database, Row
from core.definitions import Registry
from core.derivatives import Derivatives, Made
from core.errors import Unavailable
from core.jobs import BUILD_BUNDLE, CREATE_DERIVATIVES, JOBS_CHANNEL, Jobs
from core.storage import ObjectStorage
from worker import tasks
from worker.bundle_build import BuildAborted, BundleBuild, PermanentFailure
from worker.pool import WorkerCrashed, WorkerPool

log = logging.getLogger("derivatives.runner")
POLL_SECONDS = 1.0
# Seconds between progress writes of one job: 4 a second reads as live to a person (the anchor
# polled every 2 s), and each write is fanned out to every watcher, a thousand of them perhaps.
PROGRESS_INTERVAL = 0.25


@dataclass
class JobState:
    row: Row
    done: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    reported_failures: int = 0  # failures[:reported_failures] are in the jobs row already
    progress_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    lease_lost: bool = False
    complete: bool = False
    stage: str = "running"
    reported_at: float = 0.0

    def unreported(self) -> list[dict[str, str]]:
        """Failures not yet written, marked as written (each progress write appends its share)."""
        new = self.failures[self.reported_failures :]
        self.reported_failures = len(self.failures)
        return new


class Runner:
    def __init__(
        self, db: Database, storage: ObjectStorage, settings: Settings, registry: Registry, pool: WorkerPool
    ) -> None:
        self.db = db
        self.settings = settings
        self.registry = registry
        self.pool = pool
        self.jobs = Jobs(db, settings.job_lease_seconds)
        self.derivatives = Derivatives(db, storage, settings.bucket_derivatives)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # Assets in flight across jobs: two per process, so while one asset's results are attached in
        # Postgres (no CPU), the next is already rendering.
        self.slots = asyncio.Semaphore(2 * pool.size)
        # Jobs held at once: more than the processes, so a long bundle build (mostly I/O) does not hold
        # every derivative job back; the slots above still bound the CPU work.
        self.max_jobs = 2 * pool.size
        # Bundle writers stream for minutes: their own threads, so they never starve asyncio.to_thread
        # (health probes, uploads) and at most max_jobs of them run.
        self.writers = ThreadPoolExecutor(max_workers=self.max_jobs, thread_name_prefix="bundle-writer")
        bundles = Bundles(db, storage, settings, registry, self.jobs)
        self.builder = BundleBuild(
            db, storage, settings, registry, bundles, self._derive_for_bundle, 2 * pool.size, self.writers
        )
        self.stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._cleanups: set[asyncio.Future[None]] = set()
        self._renders: set[asyncio.Future[list[dict[str, Any]]]] = set()

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="runner-listen"),
            asyncio.create_task(self._claim_loop(), name="runner-claim"),
        ]
        log.info("runner %s started with %d slots", self.worker_id, self.pool.size)

    async def stop(self, grace: float) -> None:
        """Stop claiming; let in-flight assets finish for up to `grace` s; re-queue what is left."""
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
        self.writers.shutdown(wait=False, cancel_futures=True)

    async def _listen(self) -> None:
        """Wake the claim loop on NOTIFY; a lost connection only means polling until it is back."""
        while not self.stopping.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(self.db.url, autocommit=True) as conn:
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
            if now - last_sweep >= self.jobs.lease_seconds:
                last_sweep = now
                await self._fail_exhausted()
            claimed = None
            if len(self._running) < self.max_jobs:
                try:
                    claimed = await self.jobs.claim(self.worker_id, [CREATE_DERIVATIVES, BUILD_BUNDLE])
                except Exception as exc:  # database away: keep trying, health reports it
                    log.warning("claim failed: %s", exc)
            if claimed is not None:
                task = asyncio.create_task(self._run(JobState(claimed)), name=f"job-{claimed['job_id']}")
                self._running.add(task)
                task.add_done_callback(self._running.discard)
                task.add_done_callback(lambda _: self._wake.set())  # a free job slot: claim again now
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)

    async def _fail_exhausted(self) -> None:
        """Jobs whose runner died on every attempt end as failed (and their bundles as errors)."""
        try:
            for row in await self.jobs.fail_exhausted():
                log.error("job %s: %s", row["job_id"], row["error"])
                if row["kind"] == BUILD_BUNDLE:
                    await self.db.execute(
                        "bundle_failed",
                        bundle_id=uuid.UUID(row["payload"]["bundle_id"]),
                        job_id=row["job_id"],
                        worker_id=None,
                        error=row["error"],
                    )
        except Exception as exc:
            log.warning("sweeping exhausted jobs failed: %s", exc)

    # --- one job ------------------------------------------------------------------------------

    async def _run(self, job: JobState) -> None:
        job_id = job.row["job_id"]
        log.info("job %s: %s attempt %d", job_id, job.row["kind"], job.row["attempts"])
        heartbeat = asyncio.create_task(self._heartbeat(job))
        try:
            if job.row["kind"] == BUILD_BUNDLE:
                result = await self._build_bundle(job)
            else:
                await self._create_derivatives(job)
                result = None
            if job.lease_lost:
                return
            if self.stopping.is_set() and not job.complete:
                await self.jobs.retry(job_id, self.worker_id, delay_seconds=0, error="runner shut down; re-queued")
                log.info("job %s: re-queued at %d/%d on shutdown", job_id, job.done, job.row["total"])
                return
            await self.jobs.finish(
                job_id, self.worker_id, stage="succeeded", done=job.done, new_failures=job.unreported(), result=result
            )
            log.info("job %s: succeeded (%d failures)", job_id, len(job.failures))
        except BuildAborted:
            if not job.lease_lost:
                await self.jobs.retry(job_id, self.worker_id, delay_seconds=0, error="runner shut down; re-queued")
                log.info("job %s: build interrupted by shutdown; re-queued", job_id)
        except Exception as exc:
            while isinstance(exc, ExceptionGroup):
                exc = exc.exceptions[0]
            await self._failed(job, exc)
        finally:
            heartbeat.cancel()

    async def _failed(self, job: JobState, exc: Exception) -> None:
        job_id = job.row["job_id"]
        permanent = isinstance(exc, PermanentFailure | MemberUnavailable)
        if isinstance(exc, Unavailable | PermanentFailure | MemberUnavailable):
            reason = str(exc)
        else:
            reason = f"{type(exc).__name__}: {exc}"
        reason = reason.splitlines()[0][:300] if reason.strip() else type(exc).__name__
        try:
            if not permanent and job.row["attempts"] < job.row["max_attempts"]:
                delay = min(60.0, 2.0 ** job.row["attempts"])
                log.warning(
                    "job %s: attempt %d failed (%s); retry in %.0fs", job_id, job.row["attempts"], reason, delay
                )
                await self.jobs.retry(job_id, self.worker_id, delay_seconds=delay, error=reason)
                return
            log.error("job %s: failed: %s", job_id, reason, exc_info=None if permanent else exc)
            if job.row["kind"] == BUILD_BUNDLE:
                bundle_id = uuid.UUID(job.row["payload"]["bundle_id"])
                await self.db.execute(
                    "bundle_failed", bundle_id=bundle_id, job_id=job_id, worker_id=self.worker_id, error=reason
                )
            await self.jobs.finish(
                job_id, self.worker_id, stage="failed", done=job.done, new_failures=job.unreported(), error=reason
            )
        except Exception as again:  # the lease runs out and another runner retries it
            log.error("job %s: could not record failure: %s", job_id, again)

    async def _progress(self, job: JobState, stage: str = "running", force: bool = False) -> None:
        """Record `job.done` (callers count units themselves, synchronously: no increment is lost), at
        most every PROGRESS_INTERVAL unless the stage changes, the job is complete, or it is forced.

        Writes of one job go one at a time, in call order (the bundle writer thread schedules them).
        """
        async with job.progress_lock:
            now = asyncio.get_running_loop().time()
            recent = now - job.reported_at < PROGRESS_INTERVAL
            if not force and stage == job.stage and recent and job.done < job.row["total"]:
                return
            job.stage, job.reported_at = stage, now
            await self._write_progress(job)

    async def _write_progress(self, job: JobState) -> None:
        row = await self.jobs.progress(
            job.row["job_id"],
            self.worker_id,
            done=job.done,
            total=job.row["total"],
            stage=job.stage,
            new_failures=job.unreported(),
        )
        if row is None:
            job.lease_lost = True

    async def _build_bundle(self, job: JobState) -> dict[str, Any] | None:
        bundle_id = uuid.UUID(job.row["payload"]["bundle_id"])

        async def progress(done: int, stage: str) -> None:
            job.done = max(job.done, done)  # written from the writer thread's order; never backwards
            await self._progress(job, stage)

        result = await self.builder.run(bundle_id, progress, lambda: job.lease_lost or self.stopping.is_set())
        done = await self.db.fetchone(
            "bundle_succeeded",
            bundle_id=bundle_id,
            job_id=job.row["job_id"],
            worker_id=self.worker_id,
            size_bytes=result["size_bytes"],
        )
        if done is None:  # lease lost (the fenced finish will refuse too), or the bundle was restarted
            log.warning("bundle %s: built, but the bundle no longer belongs to job %s", bundle_id, job.row["job_id"])
        job.done, job.complete = job.row["total"], True
        log.info("bundle %s: built, %d bytes", bundle_id, result["size_bytes"])
        return result

    async def _derive_for_bundle(self, asset_id: str, key: str) -> str | None:
        async with self.slots:
            failures = await self._derive_asset(asset_id, [key], [], lazy=True)
        return failures[0]["reason"] if failures else None

    async def _heartbeat(self, job: JobState) -> None:
        while True:
            await asyncio.sleep(self.jobs.heartbeat_seconds)
            try:
                if not await self.jobs.heartbeat(job.row["job_id"], self.worker_id):
                    log.warning("job %s: lease lost to another runner", job.row["job_id"])
                    job.lease_lost = True
                    return
            except Exception as exc:
                log.warning("job %s: heartbeat failed: %s", job.row["job_id"], exc)

    async def _create_derivatives(self, job: JobState) -> None:
        payload: dict[str, Any] = job.row["payload"]
        queue: asyncio.Queue[str] = asyncio.Queue()
        for asset_id in payload["asset_ids"]:
            queue.put_nowait(asset_id)

        async def consume() -> None:
            while not queue.empty() and not self.stopping.is_set() and not job.lease_lost:
                asset_id = queue.get_nowait()
                async with self.slots:
                    failures = await self._derive_asset(
                        asset_id, payload.get("only", []), payload.get("exclude", []), payload.get("lazy", False)
                    )
                job.failures.extend(failures)
                job.done += 1  # counted here, before any await: concurrent consumers never lose one
                await self._progress(job)

        # A TaskGroup: when one asset raises (storage away), its siblings are cancelled too.
        async with asyncio.TaskGroup() as group:
            for _ in range(min(2 * self.pool.size, queue.qsize()) or 1):
                group.create_task(consume())
        job.complete = job.done == job.row["total"]
        if job.complete:
            await self._progress(job, force=True)

    async def _derive_asset(
        self, asset_id: str, only: list[str], exclude: list[str], lazy: bool
    ) -> list[dict[str, str]]:
        """Make one asset's derivatives; returns its failures. Unavailable propagates (job retry)."""
        asset = await self.db.fetchone("get_asset", asset_id=asset_id)
        if asset is None:
            log.info("asset %s was deleted before its derivatives were made", asset_id)
            return [{"asset_id": asset_id, "key": "", "reason": "asset was deleted"}]
        plan = self.registry.plan(asset["content_type"], asset["width"], only, exclude)
        if lazy:
            existing = {
                d["key"]
                for d in await self.db.fetchall("list_derivatives", asset_id=asset_id)
                if d["original_sha512"] == asset["sha512"]
            }
            plan = [d for d in plan if d.key not in existing]
        failures: list[dict[str, str]] = []
        if only:  # asked for by name, but no definition of the key applies to this original
            failures = [
                {"asset_id": asset_id, "key": k, "reason": f"no definition of {k!r} applies to {asset['content_type']}"}
                for k in only
                if k not in exclude and self.registry.resolve(k, asset["content_type"]) is None
            ]
        results: list[dict[str, Any]] = []
        if plan:
            results = await self._render_with_retry(_asset_input(asset), [d.as_dict() for d in plan])
        made = [_made(r) for r in results if "failed" not in r]
        if made and await self.derivatives.attach(asset_id, asset["sha512"], made) is None:
            return [{"asset_id": asset_id, "key": "", "reason": "original replaced while rendering; results discarded"}]
        failures += [{"asset_id": asset_id, "key": r["key"], "reason": r["failed"]} for r in results if "failed" in r]
        for failure in failures:
            await self.derivatives.record_failure(asset_id, asset["sha512"], failure["key"], failure["reason"])
        return failures

    async def _render_with_retry(
        self, asset: dict[str, Any], definitions: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """A crashed pool process fails every task it had in flight, most of them innocent: try again
        once on the new pool, and record the crash only if this original crashes it again."""
        for attempt in (1, 2):
            try:
                return await self._render(asset, definitions)
            except WorkerCrashed as exc:
                if attempt == 2:
                    return [{"key": d["key"], "failed": str(exc)} for d in definitions]
                log.warning("asset %s: worker process died; rendering it again", asset["asset_id"])
        raise AssertionError("unreachable")

    async def _render(self, asset: dict[str, Any], definitions: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run the pool task; if we are cancelled meanwhile, delete what it uploads once it ends."""
        future = asyncio.ensure_future(self.pool.run(tasks.make_derivatives, asset, definitions))
        self._renders.add(future)
        future.add_done_callback(self._renders.discard)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(self._discard_uploads)
            raise

    def _discard_uploads(self, future: asyncio.Future[list[dict[str, Any]]]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        locations = [(r["bucket"], r["object_key"]) for r in future.result() if "failed" not in r]
        task = asyncio.ensure_future(self.derivatives.delete_objects(locations))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def drain_cleanups(self) -> None:
        """After the pool has shut down: finish deleting uploads of cancelled renders."""
        await asyncio.gather(*self._renders, return_exceptions=True)
        await asyncio.sleep(0)  # let their done-callbacks schedule the deletions
        await asyncio.gather(*self._cleanups, return_exceptions=True)


def _made(result: dict[str, Any]) -> Made:
    fields = ("key", "bucket", "object_key", "content_type", "size_bytes", "width", "height", "sha512")
    return Made(**{k: result[k] for k in fields}, metadata={})


def _asset_input(asset: Row) -> dict[str, Any]:
    return {k: asset[k] for k in ("asset_id", "bucket", "object_key", "content_type", "sha512", "width", "height")}
