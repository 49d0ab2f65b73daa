"""Whole-work bundles: find or claim one build per (work, kind, inputs), read, reap.

The claim is the UNIQUE (work_id, kind, checksum) row in Postgres, so exactly one
build runs however many callers and server processes ask at once. The checksum
covers everything that shapes the file; any change gives a new key, and the old
object is left to the reaper.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import re
import uuid
from dataclasses import dataclass

import psycopg

from core.config import Settings
from core.database import Database, Row
from core.definitions import Registry
from core.errors import FailedPrecondition, InvalidArgument, NotFound
from core.jobs import BUILD_BUNDLE, Jobs
from core.storage import ObjectStorage, delete_quietly

log = logging.getLogger("derivatives.bundles")

# Bump when the layout of a bundle changes, so every cached bundle is rebuilt.
FORMAT_VERSION = 1
KINDS = {"pdf": "pdf", "zip": "zip"}  # kind -> file extension


class MemberUnavailable(Exception):
    """A member has no JPEG to put in the bundle: the build fails, naming it."""


@dataclass(frozen=True)
class Source:
    """Where a member's JPEG comes from: its original, or a derivative key."""

    derivative_key: str | None

    @property
    def label(self) -> str:
        return self.derivative_key or "original"


def member_source(member: Row, kind: str, registry: Registry, settings: Settings) -> Source | None:
    """The JPEG a member contributes; None when nothing suitable exists for its type."""
    content_type, width = member["content_type"], member["width"]

    def available(key: str) -> bool:
        return bool(registry.plan(content_type, width, [key], []))

    if kind == "pdf" and available(settings.pdf_derivative_key):
        return Source(settings.pdf_derivative_key)
    if content_type == "image/jpeg":
        return Source(None)  # a JPEG original serves as it is
    if available(settings.zip_derivative_key):
        return Source(settings.zip_derivative_key)
    return None


def checksum(work: Row, members: list[Row], kind: str, registry: Registry, settings: Settings) -> str:
    inputs = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "work_id": work["work_id"],
        "title": work["title"],
        "creator": work["creator"],
        "url": work["url"],
        "institution": settings.institution,
        "dpi": settings.pdf_dpi if kind == "pdf" else None,
        "members": [
            [m["asset_id"], m["sha512"], (s.label if (s := member_source(m, kind, registry, settings)) else None)]
            for m in members
        ],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


def title_words(title: str, limit: int = 25) -> str:
    words = re.findall(r"[a-z0-9]+", title.lower())[:3]
    return "_".join(words)[:limit].strip("_") or "work"


def filename(work: Row, kind: str) -> str:
    return f"{title_words(work['title'])}_{work['work_id']}_{kind}.{KINDS[kind]}"


class Bundles:
    def __init__(
        self, db: Database, storage: ObjectStorage, settings: Settings, registry: Registry, jobs: Jobs
    ) -> None:
        self.db = db
        self.storage = storage
        self.settings = settings
        self.registry = registry
        self.jobs = jobs

    async def inputs(self, work_id: str, kind: str) -> tuple[Row, list[Row], str]:
        """The work, its members (with their assets) and the checksum of what a bundle would hold."""
        work = await self.db.fetchone("get_work", work_id=work_id)
        if work is None:
            raise NotFound(f"work {work_id!r} not found")
        members = await self.db.fetchall("work_members_with_assets", work_id=work_id)
        return work, members, checksum(work, members, kind, self.registry, self.settings)

    async def find_or_create(self, work_id: str, kind: str) -> Row:
        work, members, sum_ = await self.inputs(work_id, kind)
        if not members:
            raise FailedPrecondition(f"work {work_id!r} has no members")
        where = dict(work_id=work_id, kind=kind, checksum=sum_)
        current = await self.db.fetchone("find_bundle", **where)
        # Storage is asked here, never while the row lock below is held.
        missing: uuid.UUID | None = None  # a SUCCESS bundle whose object we found gone
        if current is not None and current["status"] == "success":
            if await self._stored(current):
                await self.db.execute("touch_bundle", bundle_id=current["bundle_id"])
                with contextlib.suppress(NotFound):  # reaped this instant: claim it anew below
                    return await self.get(current["bundle_id"])
            else:
                missing = current["bundle_id"]
        async with self.db.transaction() as conn:
            row = await self.db.fetchone("lock_bundle", conn, **where)
            if row is None:
                bundle_id = uuid.uuid4()
                inserted = await self.db.fetchone(
                    "insert_bundle",
                    conn,
                    bundle_id=bundle_id,
                    bucket=self.settings.bucket_bundles,
                    object_key=f"{work_id}/{kind}_{sum_}.{KINDS[kind]}",
                    filename=filename(work, kind),
                    **where,
                )
                if inserted is not None:
                    job = await self.jobs.enqueue(BUILD_BUNDLE, {"bundle_id": str(bundle_id)}, len(members), conn)
                    await self.db.execute("set_bundle_job", conn, bundle_id=bundle_id, job_id=job["job_id"])
                    log.info("bundle %s: claimed build of %s %s (%s)", bundle_id, work_id, kind, sum_)
                    return await self._get_in(conn, bundle_id)
                row = await self.db.fetchone("lock_bundle", conn, **where)  # a racing caller claimed it
                assert row is not None
            if self._needs_restart(row, missing):
                job = await self.jobs.enqueue(BUILD_BUNDLE, {"bundle_id": str(row["bundle_id"])}, len(members), conn)
                await self.db.execute("restart_bundle", conn, bundle_id=row["bundle_id"], job_id=job["job_id"])
                log.info("bundle %s: rebuilding (was %s)", row["bundle_id"], row["status"])
            else:
                await self.db.execute("touch_bundle", conn, bundle_id=row["bundle_id"])
            return await self._get_in(conn, row["bundle_id"])

    def _needs_restart(self, row: Row, missing: uuid.UUID | None) -> bool:
        if row["status"] == "success":
            # Rebuild only what we saw missing; a bundle that succeeded since we looked is fresh.
            return row["bundle_id"] == missing
        if row["status"] == "error":
            age = dt.datetime.now(dt.UTC) - row["updated_at"]
            return age.total_seconds() >= self.settings.bundle_error_retry_seconds
        return False

    async def _stored(self, row: Row) -> bool:
        return await asyncio.to_thread(self.storage.stat, row["bucket"], row["object_key"]) is not None

    async def _get_in(self, conn: psycopg.AsyncConnection[Row], bundle_id: uuid.UUID) -> Row:
        row = await self.db.fetchone("get_bundle", conn, bundle_id=bundle_id)
        assert row is not None
        return row

    async def get(self, bundle_id: uuid.UUID) -> Row:
        row = await self.db.fetchone("get_bundle", bundle_id=bundle_id)
        if row is None:
            raise NotFound(f"bundle {bundle_id} not found")
        return row

    async def open_for_read(self, bundle_id: uuid.UUID, offset: int) -> tuple[Row, int]:
        """The bundle and its size, if it is built and stored; records the access."""
        row = await self.get(bundle_id)
        if row["status"] != "success":
            raise FailedPrecondition(f"bundle {bundle_id} is {row['status']}; watch it until it succeeds")
        info = await asyncio.to_thread(self.storage.stat, row["bucket"], row["object_key"])
        if info is None:
            raise FailedPrecondition(f"bundle {bundle_id} is no longer stored; call FindOrCreateBundle to rebuild it")
        if offset > info.size:
            raise InvalidArgument.one("offset", f"past the end of the bundle ({info.size} bytes)")
        await self.db.execute("touch_bundle", bundle_id=bundle_id)
        return row, info.size

    async def reap(self) -> int:
        """Delete idle bundles and, over the size budget, the least recently used; returns how many."""
        gone = await self.db.fetchall("reap_idle_bundles", idle_seconds=self.settings.bundle_idle_seconds)
        if self.settings.bundle_cache_bytes > 0:
            gone += await self.db.fetchall("reap_over_budget", budget_bytes=self.settings.bundle_cache_bytes)
        # The same inputs give the same key: a bundle claimed again since must keep its object.
        unused = [
            (r["bucket"], r["object_key"])
            for r in gone
            if await self.db.fetchone("bundle_object_in_use", bucket=r["bucket"], object_key=r["object_key"]) is None
        ]
        await delete_quietly(self.storage, unused)
        if gone:
            log.info("reaper: deleted %d bundle(s), %d bytes", len(gone), sum(r["size_bytes"] for r in gone))
        return len(gone)
