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
import datetime as dt
import hashlib
import json
import logging
import re
import uuid
from dataclasses import dataclass

from core import metrics
from core.config import Settings
from core.database import Conn, Database
from core.definitions import Registry
from core.errors import FailedPrecondition, InvalidArgument, NotFound, Reason
from core.lru import ExpiringLRU
from core.plan import makes, plan
from core.queue import JobQueue
from core.records import Bundle, BundleKind, BundlePayload, BundleStatus, JobKind, Location, Member, Work
from core.storage import ObjectStorage, delete_quietly

log = logging.getLogger("derivatives.bundles")

# Bump when the layout of a bundle changes (or which members may be in it), so every cached bundle is rebuilt.
# 2: a JPEG original goes into a bundle only once a derivative of it was made (the undecodable-member rule).
FORMAT_VERSION = 2
# Bump when the rules that compute a checksum change (checksum, member_source, the plan) without
# changing bundles: stored checksums computed by the old rules are then recomputed.
INPUTS_VERSION = 1
# Bundles whose stored object a process remembers having seen.
STORED_CACHE_SIZE = 100_000


class MemberUnavailable(Exception):
    """A member has no JPEG to put in the bundle: the build fails, naming it."""


@dataclass(frozen=True)
class Source:
    """Where a member's JPEG comes from: its original, or a derivative key.

    The undecodable-member rule, for both kinds: a member goes into a bundle only if a derivative
    of its current original exists or can be made: the one used (`derivative_key`), or, for an
    original used as it is, `proof_key`, the smallest the plan makes (normally made already by the
    asset's own job). An original no derivative can be made from (truncated, corrupt, over a
    limit: a recorded derivative failure) fails the bundle, naming the member; no member is decoded
    again for a bundle.
    """

    derivative_key: str | None
    proof_key: str | None = None

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
        return Source(None, _smallest(registry, member))  # a JPEG original serves as it is
    if makes(registry, member, settings.zip_derivative_key):
        return Source(settings.zip_derivative_key)
    return None


def _smallest(registry: Registry, member: Member) -> str | None:
    made = plan(registry, member).make
    return min(made, key=lambda d: (d.max_width or 10**9, d.key)).key if made else None


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


def fingerprint(registry: Registry, settings: Settings) -> str:
    """Everything besides a work's own rows that shapes its bundles' checksum (and so its bundles)."""
    config = {
        "format": FORMAT_VERSION,
        "inputs": INPUTS_VERSION,
        "institution": settings.institution,
        "pdf_dpi": settings.pdf_dpi,
        "pdf_derivative": settings.pdf_derivative_key,
        "zip_derivative": settings.zip_derivative_key,
        "definitions": [repr(d) for d in registry.sorted_definitions()],
    }
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:32]


class StoredInputs:
    """The inputs checksum of each work's bundles, stored and kept current as the inputs change.

    Refreshed in the transaction that changes an input (PutWork; a member's original replaced),
    under the work's row lock, so a read after that commit sees the new checksum and two writers
    of one work's inputs never interleave. Rows computed under another configuration (another
    fingerprint) are recomputed on use.
    """

    def __init__(self, db: Database, registry: Registry, settings: Settings) -> None:
        self.db = db
        self.registry = registry
        self.settings = settings
        self.fingerprint = fingerprint(registry, settings)
        self._backfilled = False  # every work has its row under this configuration (new ones get it at PutWork)

    async def read(self, conn: Conn, work_id: str, kind: BundleKind) -> Inputs | None:
        row = await self.db.fetchone("get_work", conn, work_id=work_id)
        if row is None:
            return None
        members = tuple(
            Member.from_row(r) for r in await self.db.fetchall("work_members_with_assets", conn, work_id=work_id)
        )
        work = Work.from_row(row, [m.asset_id for m in members])
        return Inputs(work, members, checksum(work, members, kind, self.registry, self.settings))

    async def read_and_store(self, work_id: str, kind: BundleKind) -> Inputs | None:
        """Compute and store a work's inputs on first use (or under a new configuration).

        Under a share lock of the work: a transaction changing its inputs (which holds the work's row
        lock) finishes first, or waits for us and then stores its own newer checksum; a checksum
        computed from rows that changed meanwhile is never stored.
        """
        async with self.db.transaction() as conn:
            if await self.db.fetchone("share_work", conn, work_id=work_id) is None:
                return None
            inputs = await self.read(conn, work_id, kind)
            if inputs is not None:
                await self.store(conn, inputs, kind)
            return inputs

    async def refresh(self, conn: Conn, work_id: str) -> None:
        """Recompute and store the work's checksums (call with the work's row locked, in the changing transaction)."""
        for kind in BundleKind:
            inputs = await self.read(conn, work_id, kind)
            if inputs is not None:
                await self.store(conn, inputs, kind)

    async def store(self, conn: Conn, inputs: Inputs, kind: BundleKind) -> None:
        await self.db.execute(
            "upsert_bundle_inputs",
            conn,
            work_id=inputs.work.work_id,
            kind=kind.value,
            checksum=inputs.checksum,
            fingerprint=self.fingerprint,
        )

    async def refresh_works_of(self, conn: Conn, asset_id: str) -> None:
        """An asset's original changed: refresh every work it is a member of (locking them, in id order)."""
        for row in await self.db.fetchall("lock_works_of_asset", conn, asset_id=asset_id):
            await self.refresh(conn, row["work_id"])

    async def backfill(self, batch: int = 500) -> int:
        """Store the checksums of works that have none under this configuration; returns how many were done.

        Once a round finds none, this process stops looking (PutWork stores a new work's rows).
        """
        if self._backfilled:
            return 0
        rows = await self.db.fetchall(
            "works_without_inputs", fingerprint=self.fingerprint, kinds=len(BundleKind), limit=batch
        )
        for row in rows:
            async with self.db.transaction() as conn:
                if await self.db.fetchone("lock_work", conn, work_id=row["work_id"]) is not None:
                    await self.refresh(conn, row["work_id"])
        self._backfilled = not rows
        return len(rows)


def title_words(title: str, limit: int = 25) -> str:
    words = re.findall(r"[a-z0-9]+", title.lower())[:3]
    return "_".join(words)[:limit].strip("_") or "work"


def filename(work: Work, kind: BundleKind) -> str:
    return f"{title_words(work.title)}_{work.work_id}_{kind.value}.{kind.extension}"


class Bundles:
    def __init__(
        self,
        db: Database,
        storage: ObjectStorage,
        settings: Settings,
        registry: Registry,
        queue: JobQueue,
        stored_inputs: StoredInputs,
    ) -> None:
        self.db = db
        self.storage = storage
        self.settings = settings
        self.registry = registry
        self.queue = queue
        self.stored_inputs = stored_inputs
        self.flush_seconds = settings.bundle_access_flush_seconds
        # Bundles this process saw stored, and until when it trusts that without asking storage again.
        self._seen_stored: ExpiringLRU[uuid.UUID, bool] = ExpiringLRU(STORED_CACHE_SIZE)

    # --- reading ------------------------------------------------------------------------------

    async def inputs(self, work_id: str, kind: BundleKind) -> Inputs:
        """The work, its members (with their assets) and the checksum of what a bundle would hold."""
        async with self.db.connection() as conn:
            inputs = await self.stored_inputs.read(conn, work_id, kind)
        if inputs is None:
            raise NotFound(f"work {work_id!r} not found", Reason.WORK_NOT_FOUND, work_id=work_id)
        return inputs

    async def get(self, bundle_id: uuid.UUID) -> Bundle:
        row = await self.db.fetchone("get_bundle", bundle_id=bundle_id)
        if row is None:
            raise NotFound(f"bundle {bundle_id} not found", Reason.BUNDLE_NOT_FOUND)
        return Bundle.from_row(row)

    async def job_of(self, bundle_id: uuid.UUID) -> uuid.UUID:
        """The job that builds (or built) the bundle: what WatchProgress follows."""
        row = await self.db.fetchone("bundle_job", bundle_id=bundle_id)
        if row is None or row["job_id"] is None:
            raise NotFound(f"bundle {bundle_id} not found", Reason.BUNDLE_NOT_FOUND)
        job_id: uuid.UUID = row["job_id"]
        return job_id

    async def open_for_read(self, bundle_id: uuid.UUID, offset: int) -> tuple[Bundle, int]:
        """The bundle and its size, if it is built and stored; records the access."""
        bundle = await self.get(bundle_id)
        if bundle.status is not BundleStatus.SUCCESS:
            raise FailedPrecondition(
                f"bundle {bundle_id} is {bundle.status.value}; watch it until it succeeds", Reason.BUNDLE_NOT_READY
            )
        info = await asyncio.to_thread(self.storage.stat, bundle.location.bucket, bundle.location.key)
        if info is None:
            self._seen_stored.discard(bundle_id)
            raise FailedPrecondition(
                f"bundle {bundle_id} is no longer stored; call FindOrCreateBundle to rebuild it",
                Reason.BUNDLE_NOT_STORED,
            )
        if offset > info.size:
            raise InvalidArgument.one("offset", f"past the end of the bundle ({info.size} bytes)")
        if not await self._touch(bundle):
            raise NotFound(f"bundle {bundle_id} not found", Reason.BUNDLE_NOT_FOUND)
        return bundle, info.size

    # --- state changes ------------------------------------------------------------------------

    async def find_or_create(self, work_id: str, kind: BundleKind, owner: str) -> Bundle:
        """The bundle of the work's current inputs: stored, being built, or claimed for a build now.

        A cache hit is one indexed read (the stored inputs checksum joined to its bundle) and, at
        most once per flush interval, a write of the access. A build it starts belongs to `owner`.
        """
        hot = await self.db.fetchone("hot_bundle", work_id=work_id, kind=kind.value)
        current = hot is not None and hot["fingerprint"] == self.stored_inputs.fingerprint
        if current and hot is not None and hot["bundle_id"] is not None:
            found = Bundle.from_row(hot)
            # Stored, or being built, or failed too recently to retry: the answer as it stands. (A touch
            # that finds no row: reaped this instant; claimed anew below.)
            usable = (
                await self._stored(found)
                if found.status is BundleStatus.SUCCESS
                else not self._needs_restart(found, missing=None)
            )
            if usable and await self._touch(found):
                return _looked_up(kind, found)
        stored = hot["inputs_checksum"] if current and hot is not None else None
        return await self._find_or_claim(work_id, kind, stored, owner)

    async def _find_or_claim(self, work_id: str, kind: BundleKind, stored_checksum: str | None, owner: str) -> Bundle:
        inputs = await self.inputs(work_id, kind) if stored_checksum is not None else None
        if inputs is None or inputs.checksum != stored_checksum:
            if inputs is not None:
                # Changed since the read above (a commit in between), or by something that did not refresh it.
                log.info("work %s: stored %s inputs checksum differs from the rows; storing it anew", work_id, kind)
            # First use, another configuration, or a stale row: computed and stored under the work's share lock.
            inputs = await self.stored_inputs.read_and_store(work_id, kind)
            if inputs is None:
                raise NotFound(f"work {work_id!r} not found", Reason.WORK_NOT_FOUND, work_id=work_id)
        if not inputs.members:
            raise FailedPrecondition(f"work {work_id!r} has no members", Reason.WORK_HAS_NO_MEMBERS)
        where = dict(work_id=work_id, kind=kind.value, checksum=inputs.checksum)
        row = await self.db.fetchone("find_bundle", **where)
        # Storage is asked here, never while the row lock below is held.
        missing: uuid.UUID | None = None  # a SUCCESS bundle whose object we found gone
        if row is not None and row["status"] == BundleStatus.SUCCESS:
            current = Bundle.from_row(row)
            if not await self._stored(current):
                missing = current.bundle_id
            elif await self._touch(current):
                return _looked_up(kind, current)
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
                    job = await self._enqueue_build(conn, bundle_id, len(inputs.members), owner)
                    await self.db.execute("set_bundle_job", conn, bundle_id=bundle_id, job_id=job)
                    log.info("bundle %s: claimed build of %s %s (%s)", bundle_id, work_id, kind, inputs.checksum)
                    return _looked_up(kind, await self._get_in(conn, bundle_id), claimed=True)
                locked = await self.db.fetchone("lock_bundle", conn, **where)  # a racing caller claimed it
                assert locked is not None
            bundle = Bundle.from_row(locked)
            claimed = self._needs_restart(bundle, missing)
            if claimed:
                job = await self._enqueue_build(conn, bundle.bundle_id, len(inputs.members), owner)
                await self.db.execute("restart_bundle", conn, bundle_id=bundle.bundle_id, job_id=job)
                log.info("bundle %s: rebuilding (was %s)", bundle.bundle_id, bundle.status)
            else:
                await self.db.execute("touch_bundle", conn, bundle_id=bundle.bundle_id)
            return _looked_up(kind, await self._get_in(conn, bundle.bundle_id), claimed)

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
        # Spare what was accessed within twice the flush interval: its access may not be written yet.
        recent = 2 * self.flush_seconds
        gone = await self.db.fetchall(
            "reap_idle_bundles", idle_seconds=self.settings.bundle_idle_seconds, recent_seconds=recent
        )
        metrics.bundles_evicted(metrics.Eviction.IDLE, [(r["kind"], r["size_bytes"]) for r in gone])
        if self.settings.bundle_cache_bytes > 0:
            over = await self.db.fetchall(
                "reap_over_budget", budget_bytes=self.settings.bundle_cache_bytes, recent_seconds=recent
            )
            metrics.bundles_evicted(metrics.Eviction.BUDGET, [(r["kind"], r["size_bytes"]) for r in over])
            gone += over
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

    async def _enqueue_build(self, conn: Conn, bundle_id: uuid.UUID, members: int, owner: str) -> uuid.UUID:
        job = await self.queue.enqueue(JobKind.BUILD_BUNDLE, BundlePayload(bundle_id), members, owner, conn)
        return job.job_id

    def _needs_restart(self, bundle: Bundle, missing: uuid.UUID | None) -> bool:
        if bundle.status is BundleStatus.SUCCESS:
            # Rebuild only what we saw missing; a bundle that succeeded since we looked is fresh.
            return bundle.bundle_id == missing
        if bundle.status is BundleStatus.ERROR:
            age = dt.datetime.now(dt.UTC) - bundle.updated_at
            return age.total_seconds() >= self.settings.bundle_error_retry_seconds
        return False

    async def _touch(self, bundle: Bundle) -> bool:
        """Record an access, unless the stored one is younger than the flush interval (no write then).

        False when the row is gone (reaped since it was read). A bundle accessed within the interval
        cannot have been reaped: the reaper spares twice that.
        """
        age = bundle.access_age_seconds  # the database's clock: the reaper's
        if age is None:
            age = (dt.datetime.now(dt.UTC) - bundle.last_accessed_at).total_seconds()
        if age < self.flush_seconds:
            return True
        return await self.db.fetchone("touch_bundle", bundle_id=bundle.bundle_id) is not None

    async def _stored(self, bundle: Bundle) -> bool:
        """Whether the bundle's object exists; a positive answer is trusted for the flush interval."""
        if self._seen_stored.get(bundle.bundle_id):
            return True
        stored = await asyncio.to_thread(self.storage.stat, bundle.location.bucket, bundle.location.key) is not None
        if stored and self.flush_seconds > 0:
            self._seen_stored.put(bundle.bundle_id, True, self.flush_seconds)
        else:
            self._seen_stored.discard(bundle.bundle_id)
        return stored

    async def _get_in(self, conn: Conn, bundle_id: uuid.UUID) -> Bundle:
        row = await self.db.fetchone("get_bundle", conn, bundle_id=bundle_id)
        assert row is not None
        return Bundle.from_row(row)


_LOOKUP = {
    BundleStatus.SUCCESS: metrics.BundleLookup.HIT,
    BundleStatus.IN_PROGRESS: metrics.BundleLookup.BUILDING,
    BundleStatus.ERROR: metrics.BundleLookup.FAILED,
}


def _looked_up(kind: BundleKind, bundle: Bundle, claimed: bool = False) -> Bundle:
    """What find_or_create answers, counted: a build it claimed is the cache's miss."""
    metrics.bundle_lookup(kind, metrics.BundleLookup.MISS if claimed else _LOOKUP[bundle.status])
    return bundle
