"""The durable job queue, and the retry rule. Everything about a job's life is decided here.

`JobQueue` is the small interface a runner needs (enqueue, claim, renew, progress,
finish, fail, requeue); `PostgresQueue` implements it:

- Enqueue inserts a row and NOTIFYs `JOBS_CHANNEL` so idle runners wake; runners also
  poll, so a lost notification only delays.
- A claim is `FOR UPDATE SKIP LOCKED`; a claimed job is leased: its runner renews the
  lease, and a job whose lease ran out is claimed again by another runner.
- Every update is fenced by the claiming runner's id: a runner that lost its lease
  cannot overwrite the new owner's progress.
- Every visible change bumps `seq`; a trigger records it in `progress_events` and
  NOTIFYs `PROGRESS_CHANNEL` with the job id (migration 0002).

The retry rule (`retries`, `retry_delay`): a failure that retrying cannot help fails
the job at once; otherwise it is re-queued with exponential backoff until
`max_attempts`. A job whose runner died on every attempt is failed for good by
`give_up_exhausted`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Protocol

import psycopg
from psycopg.types.json import Jsonb

from core import tracing
from core.database import Database, Row
from core.errors import NotFound, Reason, ResourceExhausted
from core.records import AssetFailure, Job, JobKind, Payload, Stage

# LISTEN/NOTIFY channels. PROGRESS_CHANNEL is also named in migration 0002's trigger.
JOBS_CHANNEL = "derivatives_jobs"
PROGRESS_CHANNEL = "derivatives_progress"
# Finished jobs and their progress events are forgotten this long after they end.
RETENTION_SECONDS = 7 * 24 * 3600.0
MAX_RETRY_DELAY = 60.0
# RetryInfo of a refused enqueue: a caller over its job limit tries again after this long.
RETRY_AFTER_SECONDS = 10.0


def retries(job: Job, permanent: bool) -> bool:
    """Whether a failed attempt is tried again: not when retrying cannot help, nor past max_attempts."""
    return not permanent and job.attempts < job.max_attempts


def retry_delay(attempts: int) -> float:
    """Seconds before attempt `attempts + 1`: 2, 4, 8, ... up to a minute."""
    return min(MAX_RETRY_DELAY, 2.0**attempts)


Conn = psycopg.AsyncConnection[Row]


class JobQueue(Protocol):
    lease_seconds: float

    async def enqueue(
        self, kind: JobKind, payload: Payload, total: int, owner: str, conn: Conn | None = None
    ) -> Job: ...
    async def get(self, job_id: uuid.UUID) -> Job: ...
    async def claim(self, worker_id: str, kinds: Sequence[JobKind]) -> Job | None: ...
    async def renew(self, job_id: uuid.UUID, worker_id: str) -> bool: ...
    async def progress(
        self,
        job_id: uuid.UUID,
        worker_id: str,
        *,
        done: int,
        total: int,
        stage: Stage,
        new_failures: list[AssetFailure],
    ) -> bool: ...
    async def finish(
        self, job_id: uuid.UUID, worker_id: str, *, done: int, new_failures: list[AssetFailure]
    ) -> bool: ...
    async def retry(self, job: Job, worker_id: str, *, reason: str) -> bool: ...
    async def fail(
        self, job_id: uuid.UUID, worker_id: str, *, reason: str, done: int, new_failures: list[AssetFailure]
    ) -> bool: ...
    async def requeue(self, job_id: uuid.UUID, worker_id: str, *, reason: str) -> bool: ...
    async def give_up_exhausted(self) -> list[Job]: ...
    async def prune(self, older_than_seconds: float = RETENTION_SECONDS) -> None: ...


class PostgresQueue:
    """The queue in the `jobs` table."""

    def __init__(self, db: Database, lease_seconds: float = 30.0, max_active_per_owner: int = 0) -> None:
        self.db = db
        self.lease_seconds = lease_seconds
        self.max_active_per_owner = max_active_per_owner  # 0: no limit

    async def enqueue(self, kind: JobKind, payload: Payload, total: int, owner: str, conn: Conn | None = None) -> Job:
        """Insert a job for `owner` (inside `conn`'s transaction when given: it becomes visible on commit).

        ResourceExhausted when the owner already has `max_active_per_owner` jobs queued or running.
        The count and the insert are not serialized: concurrent calls of one owner may each pass
        the check, so the limit can be exceeded by as many calls as run at once.
        """
        if conn is None:
            async with self.db.transaction() as own:
                return await self._insert(own, kind, payload, total, owner)
        return await self._insert(conn, kind, payload, total, owner)

    async def _insert(self, conn: Conn, kind: JobKind, payload: Payload, total: int, owner: str) -> Job:
        limit = self.max_active_per_owner
        if limit > 0:
            row = await self.db.fetchone("active_jobs_of_owner", conn, owner=owner, limit=limit)
            if row is not None and row["active"] >= limit:
                raise ResourceExhausted(
                    f"{owner} already has {limit} jobs queued or running; wait for some to finish",
                    Reason.TOO_MANY_JOBS,
                    retry_after=RETRY_AFTER_SECONDS,
                    limit=str(limit),
                )
        row = await self.db.fetchone(
            "insert_job",
            conn,
            job_id=uuid.uuid4(),
            kind=kind.value,
            payload=Jsonb(payload.as_json()),
            total=total,
            owner=owner,
            traceparent=tracing.traceparent(),
        )
        assert row is not None
        await conn.execute("SELECT pg_notify(%s, %s)", (JOBS_CHANNEL, kind.value))
        return Job.from_row(row)

    async def get(self, job_id: uuid.UUID) -> Job:
        row = await self.db.fetchone("get_job", job_id=job_id)
        if row is None:
            raise NotFound(f"job {job_id} not found", Reason.JOB_NOT_FOUND)
        return Job.from_row(row)

    async def claim(self, worker_id: str, kinds: Sequence[JobKind]) -> Job | None:
        row = await self.db.fetchone(
            "claim_job", worker_id=worker_id, kinds=[k.value for k in kinds], lease_seconds=self.lease_seconds
        )
        return Job.from_row(row) if row is not None else None

    async def renew(self, job_id: uuid.UUID, worker_id: str) -> bool:
        """False when the lease was lost (another runner took the job over)."""
        return await self.db.fetchone("heartbeat_job", job_id=job_id, worker_id=worker_id) is not None

    async def progress(
        self,
        job_id: uuid.UUID,
        worker_id: str,
        *,
        done: int,
        total: int,
        stage: Stage,
        new_failures: list[AssetFailure],
    ) -> bool:
        """Record progress (failures are appended); False when the lease was lost."""
        row = await self.db.fetchone(
            "progress_job",
            job_id=job_id,
            worker_id=worker_id,
            done=done,
            total=total,
            stage=stage.value,
            new_failures=_failures(new_failures),
        )
        return row is not None

    async def finish(self, job_id: uuid.UUID, worker_id: str, *, done: int, new_failures: list[AssetFailure]) -> bool:
        """The job succeeded (some assets may have failed: they are listed)."""
        return await self._end(job_id, worker_id, Stage.SUCCEEDED, done, new_failures, None)

    async def retry(self, job: Job, worker_id: str, *, reason: str) -> bool:
        """Back in the queue after the backoff delay of its attempt; False when the lease was lost."""
        row = await self.db.fetchone(
            "retry_job", job_id=job.job_id, worker_id=worker_id, delay_seconds=retry_delay(job.attempts), error=reason
        )
        return row is not None

    async def fail(
        self, job_id: uuid.UUID, worker_id: str, *, reason: str, done: int, new_failures: list[AssetFailure]
    ) -> bool:
        """Failed for good; False when the lease was lost."""
        return await self._end(job_id, worker_id, Stage.FAILED, done, new_failures, reason)

    async def requeue(self, job_id: uuid.UUID, worker_id: str, *, reason: str) -> bool:
        """Back in the queue at once, for another runner (this one is shutting down)."""
        row = await self.db.fetchone("retry_job", job_id=job_id, worker_id=worker_id, delay_seconds=0, error=reason)
        return row is not None

    async def _end(
        self,
        job_id: uuid.UUID,
        worker_id: str,
        stage: Stage,
        done: int,
        new_failures: list[AssetFailure],
        error: str | None,
    ) -> bool:
        row = await self.db.fetchone(
            "finish_job",
            job_id=job_id,
            worker_id=worker_id,
            stage=stage.value,
            done=done,
            new_failures=_failures(new_failures),
            error=error,
        )
        return row is not None

    async def give_up_exhausted(self) -> list[Job]:
        """Fail jobs whose runner died on every attempt; returns them (a bundle's must be marked too)."""
        return [
            Job.from_row(r) for r in await self.db.fetchall("fail_exhausted_jobs", lease_seconds=self.lease_seconds)
        ]

    async def prune(self, older_than_seconds: float = RETENTION_SECONDS) -> None:
        """Forget long-finished jobs and their progress events, a batch at a time."""
        await self.db.execute("prune_progress_events", older_than_seconds=older_than_seconds)
        await self.db.execute("prune_jobs", older_than_seconds=older_than_seconds)


def _failures(failures: list[AssetFailure]) -> Jsonb:
    return Jsonb([f.as_json() for f in failures])
