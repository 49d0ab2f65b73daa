"""Whole-work bundles: every change of a bundle's state is a method here.

    (none) ──find_or_create──▶ in_progress ──built──▶ success ──reap──▶ (deleted)
                                   ▲    └────failed──▶ error ──reap──▶ (deleted)
                                   └── restart: a success whose object vanished, an error older than the retry delay

The claim is the UNIQUE (work_id, kind, checksum) row in Postgres, so exactly one
build runs however many callers and server processes ask at once. The checksum
covers everything that shapes the file; any change gives a new key, and the old
object is left to the reaper. `built` and `failed` are fenced by the build job's
owner, so a builder that lost its lease cannot mark the bundle.
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

from core.config import Settings
from core.database import Conn, Database
from core.definitions import Registry
from core.errors import FailedPrecondition, InvalidArgument, NotFound
from core.plan import makes
from core.queue import JobQueue
from core.records import Bundle, BundleKind, BundlePayload, BundleStatus, JobKind, Location, Member, Work
from core.storage import ObjectStorage, delete_quietly

log = logging.getLogger("derivatives.bundles")

# Bump when the layout of a bundle changes, so every cached bundle is rebuilt.
FORMAT_VERSION = 1


class MemberUnavailable(Exception):
    """A member has no JPEG to put in the bundle: the build fails, naming it."""


@dataclass(frozen=True)
class Source:
    """Where a member's JPEG comes from: its original, or a derivative key."""

    derivative_key: str | None

    @property
    def label(self) -> str:
        return self.derivative_key or "original"


@dataclass(frozen=True)
class Inputs:
    """What a bundle of a work is made of, and the checksum of it all."""

    work: Work
    members: tuple[Member, ...]
    checksum: str


def member_source(member: Member, kind: BundleKind, registry: Registry, settings: Settings) -> Source | None:
    """The JPEG a member contributes; None when nothing suitable exists for its type."""
    if kind is BundleKind.PDF and makes(registry, member, settings.pdf_derivative_key):
        return Source(settings.pdf_derivative_key)
    if member.content_type == "image/jpeg":
        return Source(None)  # a JPEG original serves as it is
    if makes(registry, member, settings.zip_derivative_key):
        return Source(settings.zip_derivative_key)
    return None


def checksum(work: Work, members: tuple[Member, ...], kind: BundleKind, registry: Registry, settings: Settings) -> str:
    inputs = {
        "format": FORMAT_VERSION,
        "kind": kind.value,
        "work_id": work.work_id,
        "title": work.title,
        "creator": work.creator,
        "url": work.url,
        "institution": settings.institution,
        "dpi": settings.pdf_dpi if kind is BundleKind.PDF else None,
        "members": [
            [m.asset_id, m.sha512, (s.label if (s := member_source(m, kind, registry, settings)) else None)]
            for m in members
        ],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


def title_words(title: str, limit: int = 25) -> str:
    words = re.findall(r"[a-z0-9]+", title.lower())[:3]
    return "_".join(words)[:limit].strip("_") or "work"


def filename(work: Work, kind: BundleKind) -> str:
    return f"{title_words(work.title)}_{work.work_id}_{kind.value}.{kind.extension}"


class Bundles:
    def __init__(
        self, db: Database, storage: ObjectStorage, settings: Settings, registry: Registry, queue: JobQueue
    ) -> None:
        self.db = db
        self.storage = storage
        self.settings = settings
        self.registry = registry
        self.queue = queue

    # --- reading ------------------------------------------------------------------------------

    async def inputs(self, work_id: str, kind: BundleKind) -> Inputs:
        """The work, its members (with their assets) and the checksum of what a bundle would hold."""
        async with self.db.connection() as conn:
            row = await self.db.fetchone("get_work", conn, work_id=work_id)
            if row is None:
                raise NotFound(f"work {work_id!r} not found")
            members = tuple(
                Member.from_row(r) for r in await self.db.fetchall("work_members_with_assets", conn, work_id=work_id)
            )
        work = Work.from_row(row, [m.asset_id for m in members])
        return Inputs(work, members, checksum(work, members, kind, self.registry, self.settings))

    async def get(self, bundle_id: uuid.UUID) -> Bundle:
        row = await self.db.fetchone("get_bundle", bundle_id=bundle_id)
        if row is None:
            raise NotFound(f"bundle {bundle_id} not found")
        return Bundle.from_row(row)

    async def job_of(self, bundle_id: uuid.UUID) -> uuid.UUID:
        """The job that builds (or built) the bundle: what WatchProgress follows."""
        row = await self.db.fetchone("bundle_job", bundle_id=bundle_id)
        if row is None or row["job_id"] is None:
            raise NotFound(f"bundle {bundle_id} not found")
        job_id: uuid.UUID = row["job_id"]
        return job_id

    async def open_for_read(self, bundle_id: uuid.UUID, offset: int) -> tuple[Bundle, int]:
        """The bundle and its size, if it is built and stored; records the access."""
        bundle = await self.get(bundle_id)
        if bundle.status is not BundleStatus.SUCCESS:
            raise FailedPrecondition(f"bundle {bundle_id} is {bundle.status.value}; watch it until it succeeds")
        info = await asyncio.to_thread(self.storage.stat, bundle.location.bucket, bundle.location.key)
        if info is None:
            raise FailedPrecondition(f"bundle {bundle_id} is no longer stored; call FindOrCreateBundle to rebuild it")
        if offset > info.size:
            raise InvalidArgument.one("offset", f"past the end of the bundle ({info.size} bytes)")
        await self.db.execute("touch_bundle", bundle_id=bundle_id)
        return bundle, info.size

    # --- state changes ------------------------------------------------------------------------

    async def find_or_create(self, work_id: str, kind: BundleKind) -> Bundle:
        """The bundle of the work's current inputs: stored, being built, or claimed for a build now."""
        inputs = await self.inputs(work_id, kind)
        if not inputs.members:
            raise FailedPrecondition(f"work {work_id!r} has no members")
        where = dict(work_id=work_id, kind=kind.value, checksum=inputs.checksum)
        row = await self.db.fetchone("find_bundle", **where)
        # Storage is asked here, never while the row lock below is held.
        missing: uuid.UUID | None = None  # a SUCCESS bundle whose object we found gone
        if row is not None and row["status"] == BundleStatus.SUCCESS:
            current = Bundle.from_row(row)
            if await self._stored(current):
                await self.db.execute("touch_bundle", bundle_id=current.bundle_id)
                with contextlib.suppress(NotFound):  # reaped this instant: claim it anew below
                    return await self.get(current.bundle_id)
            else:
                missing = current.bundle_id
        async with self.db.transaction() as conn:
            locked = await self.db.fetchone("lock_bundle", conn, **where)
            if locked is None:
                bundle_id = uuid.uuid4()
                inserted = await self.db.fetchone(
                    "insert_bundle",
                    conn,
                    bundle_id=bundle_id,
                    bucket=self.settings.bucket_bundles,
                    object_key=f"{work_id}/{kind.value}_{inputs.checksum}.{kind.extension}",
                    filename=filename(inputs.work, kind),
                    **where,
                )
                if inserted is not None:
                    job = await self._enqueue_build(conn, bundle_id, len(inputs.members))
                    await self.db.execute("set_bundle_job", conn, bundle_id=bundle_id, job_id=job)
                    log.info("bundle %s: claimed build of %s %s (%s)", bundle_id, work_id, kind, inputs.checksum)
                    return await self._get_in(conn, bundle_id)
                locked = await self.db.fetchone("lock_bundle", conn, **where)  # a racing caller claimed it
                assert locked is not None
            bundle = Bundle.from_row(locked)
            if self._needs_restart(bundle, missing):
                job = await self._enqueue_build(conn, bundle.bundle_id, len(inputs.members))
                await self.db.execute("restart_bundle", conn, bundle_id=bundle.bundle_id, job_id=job)
                log.info("bundle %s: rebuilding (was %s)", bundle.bundle_id, bundle.status)
            else:
                await self.db.execute("touch_bundle", conn, bundle_id=bundle.bundle_id)
            return await self._get_in(conn, bundle.bundle_id)

    async def built(self, bundle_id: uuid.UUID, job_id: uuid.UUID, worker_id: str, size_bytes: int) -> bool:
        """in_progress -> success, if `worker_id` still owns the build job; False otherwise."""
        row = await self.db.fetchone(
            "bundle_succeeded", bundle_id=bundle_id, job_id=job_id, worker_id=worker_id, size_bytes=size_bytes
        )
        if row is None:
            log.warning("bundle %s: built, but the bundle no longer belongs to job %s", bundle_id, job_id)
            return False
        log.info("bundle %s: built, %d bytes", bundle_id, size_bytes)
        return True

    async def failed(self, bundle_id: uuid.UUID, job_id: uuid.UUID, worker_id: str | None, error: str) -> None:
        """in_progress -> error, if `worker_id` owns the build job (None: the queue gave the job up)."""
        await self.db.execute("bundle_failed", bundle_id=bundle_id, job_id=job_id, worker_id=worker_id, error=error)

    async def reap(self) -> int:
        """Delete idle bundles and, over the size budget, the least recently used; returns how many."""
        gone = await self.db.fetchall("reap_idle_bundles", idle_seconds=self.settings.bundle_idle_seconds)
        if self.settings.bundle_cache_bytes > 0:
            gone += await self.db.fetchall("reap_over_budget", budget_bytes=self.settings.bundle_cache_bytes)
        # The same inputs give the same key: a bundle claimed again since must keep its object.
        unused = [
            Location.from_row(r)
            for r in gone
            if await self.db.fetchone("bundle_object_in_use", bucket=r["bucket"], object_key=r["object_key"]) is None
        ]
        await delete_quietly(self.storage, unused)
        if gone:
            log.info("reaper: deleted %d bundle(s), %d bytes", len(gone), sum(r["size_bytes"] for r in gone))
        return len(gone)

    # --- helpers ------------------------------------------------------------------------------

    async def _enqueue_build(self, conn: Conn, bundle_id: uuid.UUID, members: int) -> uuid.UUID:
        job = await self.queue.enqueue(JobKind.BUILD_BUNDLE, BundlePayload(bundle_id), members, conn)
        return job.job_id

    def _needs_restart(self, bundle: Bundle, missing: uuid.UUID | None) -> bool:
        if bundle.status is BundleStatus.SUCCESS:
            # Rebuild only what we saw missing; a bundle that succeeded since we looked is fresh.
            return bundle.bundle_id == missing
        if bundle.status is BundleStatus.ERROR:
            age = dt.datetime.now(dt.UTC) - bundle.updated_at
            return age.total_seconds() >= self.settings.bundle_error_retry_seconds
        return False

    async def _stored(self, bundle: Bundle) -> bool:
        return await asyncio.to_thread(self.storage.stat, bundle.location.bucket, bundle.location.key) is not None

    async def _get_in(self, conn: Conn, bundle_id: uuid.UUID) -> Bundle:
        row = await self.db.fetchone("get_bundle", conn, bundle_id=bundle_id)
        assert row is not None
        return Bundle.from_row(row)
