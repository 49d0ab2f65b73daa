"""The durable job queue in Postgres.

Enqueue inserts a row and NOTIFYs `derivatives_jobs` so idle runners wake; runners
also poll, so a lost notification only delays. A claimed job is leased: its runner
heartbeats, and a job whose heartbeat is older than the lease is claimed again.
Every visible change bumps `seq`; a trigger records it in `progress_events` and
NOTIFYs `derivatives_progress` with the job id (migration 0002).
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from core.database import Database, Row
from core.errors import NotFound

JOBS_CHANNEL = "derivatives_jobs"
PROGRESS_CHANNEL = "derivatives_progress"
CREATE_DERIVATIVES = "create_derivatives"
BUILD_BUNDLE = "build_bundle"
TERMINAL = ("succeeded", "failed")


class Jobs:
    def __init__(self, db: Database, lease_seconds: float = 30.0) -> None:
        self.db = db
        self.lease_seconds = lease_seconds
        # Several heartbeats fit in one lease, so one slow beat never loses it.
        self.heartbeat_seconds = max(0.2, lease_seconds / 6)

    async def enqueue(
        self, kind: str, payload: dict[str, Any], total: int, conn: psycopg.AsyncConnection[Row] | None = None
    ) -> Row:
        """Insert a job (inside `conn`'s transaction when given: it becomes visible on commit)."""
        job_id = uuid.uuid4()
        if conn is None:
            async with self.db.transaction() as own:
                return await self._insert(own, job_id, kind, payload, total)
        return await self._insert(conn, job_id, kind, payload, total)

    async def _insert(
        self, conn: psycopg.AsyncConnection[Row], job_id: uuid.UUID, kind: str, payload: dict[str, Any], total: int
    ) -> Row:
        row = await self.db.fetchone("insert_job", conn, job_id=job_id, kind=kind, payload=Jsonb(payload), total=total)
        assert row is not None
        await conn.execute("SELECT pg_notify(%s, %s)", (JOBS_CHANNEL, kind))
        return row

    async def create_derivatives(
        self,
        asset_ids: list[str],
        only: list[str] | None = None,
        exclude: list[str] | None = None,
        lazy: bool = False,
        conn: psycopg.AsyncConnection[Row] | None = None,
    ) -> Row:
        """Queue derivative creation for assets that must exist (NOT_FOUND lists those that do not)."""
        unique = list(dict.fromkeys(asset_ids))
        found = {r["asset_id"] for r in await self.db.fetchall("existing_asset_ids", conn, asset_ids=unique)}
        missing = [a for a in unique if a not in found]
        if missing:
            raise NotFound(f"asset(s) not found: {', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}")
        payload = {"asset_ids": unique, "only": only or [], "exclude": exclude or [], "lazy": lazy}
        return await self.enqueue(CREATE_DERIVATIVES, payload, len(unique), conn)

    async def get(self, job_id: uuid.UUID) -> Row:
        row = await self.db.fetchone("get_job", job_id=job_id)
        if row is None:
            raise NotFound(f"job {job_id} not found")
        return row

    async def job_of_bundle(self, bundle_id: uuid.UUID) -> uuid.UUID:
        row = await self.db.fetchone("bundle_job", bundle_id=bundle_id)
        if row is None or row["job_id"] is None:
            raise NotFound(f"bundle {bundle_id} not found")
        job_id: uuid.UUID = row["job_id"]
        return job_id

    async def claim(self, worker_id: str, kinds: list[str]) -> Row | None:
        return await self.db.fetchone("claim_job", worker_id=worker_id, kinds=kinds, lease_seconds=self.lease_seconds)

    async def heartbeat(self, job_id: uuid.UUID, worker_id: str) -> bool:
        """False when the lease was lost (another runner took the job over)."""
        return await self.db.fetchone("heartbeat_job", job_id=job_id, worker_id=worker_id) is not None

    async def progress(
        self,
        job_id: uuid.UUID,
        worker_id: str,
        *,
        done: int,
        total: int,
        stage: str,
        new_failures: list[dict[str, str]],
    ) -> Row | None:
        return await self._update(
            "progress_job",
            job_id=job_id,
            worker_id=worker_id,
            done=done,
            total=total,
            stage=stage,
            new_failures=Jsonb(new_failures),
        )

    async def finish(
        self,
        job_id: uuid.UUID,
        worker_id: str,
        *,
        stage: str,
        done: int,
        new_failures: list[dict[str, str]],
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> Row | None:
        return await self._update(
            "finish_job",
            job_id=job_id,
            worker_id=worker_id,
            stage=stage,
            done=done,
            new_failures=Jsonb(new_failures),
            error=error,
            result=Jsonb(result) if result is not None else None,
        )

    async def retry(self, job_id: uuid.UUID, worker_id: str, *, delay_seconds: float, error: str) -> Row | None:
        return await self._update(
            "retry_job", job_id=job_id, worker_id=worker_id, delay_seconds=delay_seconds, error=error
        )

    async def fail_exhausted(self) -> list[Row]:
        """End jobs whose runner died on every attempt; returns them (a bundle's must be marked too)."""
        return await self.db.fetchall("fail_exhausted_jobs", lease_seconds=self.lease_seconds)

    async def prune(self, older_than_seconds: float) -> None:
        """Forget long-finished jobs and their progress events, a batch at a time."""
        await self.db.execute("prune_progress_events", older_than_seconds=older_than_seconds)
        await self.db.execute("prune_jobs", older_than_seconds=older_than_seconds)

    async def _update(self, name: str, **params: Any) -> Row | None:
        return await self.db.fetchone(name, **params)
