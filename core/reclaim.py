"""Reclaiming storage no row references: what a crash, an outage or a killed build left behind.

Every write of the service puts bytes first and commits the row after (upload -> commit ->
delete), so a process killed in between, or a commit lost to an outage, leaves an object no
row points at: an original, a derivative, a bundle, a filesystem `.tmp-*` file, an S3
multipart upload never completed. The sweep finds and deletes them, and nothing else:

- only the service's own buckets (originals, derivatives and the buckets definitions name,
  bundles), never an import source;
- only keys of the shapes the service writes in that bucket (`KEY_SHAPES`); any other key is
  counted as foreign and left alone;
- only objects older than the grace period (DERIVATIVES_GC_GRACE_SECONDS): an upload whose
  commit is still on its way is younger than that;
- each candidate is asked about again, by itself, just before it is deleted (a row committed
  since the listing began keeps its object);
- only buckets that carry this database's installation id (`MARKER`, written on first contact):
  a server started against the wrong database (an empty embedded one, a staging copy, a restore)
  refuses to sweep another installation's buckets instead of deleting everything in them.

It walks the bucket listing (bytewise key order) beside the bucket's referenced keys read from
Postgres through a cursor in the same order, so memory stays bounded however many objects there
are. One sweep runs at a time across processes (an advisory lock); the maintenance role runs it
every DERIVATIVES_GC_INTERVAL seconds, and the admin RPC ReclaimStorage on demand.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from core import failpoints
from core.config import Settings
from core.database import QUERIES, Database
from core.errors import FailedPrecondition, Reason
from core.ids import CALLER_ID, DERIVATIVE_KEY
from core.storage import ObjectInfo, ObjectMissing, ObjectStorage, PartialUpload

log = logging.getLogger("derivatives.reclaim")
T = TypeVar("T")

_LOCK = 7_263_512  # pg advisory lock: one sweep at a time, across processes
SAMPLE = 20  # keys of orphans named in a report
MARKER = ".derivatives-installation"  # in each swept bucket: the installation id of the database it belongs to
_HEX = r"[0-9a-f]{32}"
# The keys the service writes, per kind of bucket (core/assets.py, core/derivatives.py object_key, core/bundles.py).
KEY_SHAPES = {
    "originals": re.compile(rf"{CALLER_ID.pattern}/{_HEX}"),
    "derivatives": re.compile(rf"{CALLER_ID.pattern}/{DERIVATIVE_KEY.pattern}/{_HEX}\.[a-z0-9]{{1,8}}"),
    "bundles": re.compile(rf"{CALLER_ID.pattern}/(pdf|zip)_[0-9a-f]{{32}}\.(pdf|zip)"),
}
# A filesystem put's temporary file, beside the object it was to become.
_PARTIAL_FILE = re.compile(rf"(.+/)?\.tmp-{_HEX}")


@dataclass
class BucketReport:
    """What a sweep found in one bucket, and what it did."""

    bucket: str
    listed: int = 0
    referenced: int = 0
    foreign: int = 0  # keys of shapes the service does not write there: never touched
    young: int = 0  # unreferenced, but within the grace period
    orphans: int = 0  # unreferenced, old enough: deleted (or would be, in a dry run)
    orphan_bytes: int = 0
    partial_uploads: int = 0  # incomplete multipart uploads / temporary files, old enough: removed
    sample: list[str] = field(default_factory=list)

    def add(self, other: BucketReport) -> None:
        for name in ("listed", "referenced", "foreign", "young", "orphans", "orphan_bytes", "partial_uploads"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.sample.extend(other.sample[: max(0, SAMPLE - len(self.sample))])


class Reclaimer:
    def __init__(self, db: Database, storage: ObjectStorage, settings: Settings, definition_buckets: Iterable[str]):
        self.db = db
        self.storage = storage
        self.grace_seconds = failpoints.number("gc_grace", settings.gc_grace_seconds)
        shapes: dict[str, set[str]] = {}
        for kind, bucket in (
            ("originals", settings.bucket_originals),
            ("bundles", settings.bucket_bundles),
            ("derivatives", settings.bucket_derivatives),
            *(("derivatives", b) for b in definition_buckets),
        ):
            shapes.setdefault(bucket, set()).add(kind)
        self.buckets = {bucket: [KEY_SHAPES[k] for k in sorted(kinds)] for bucket, kinds in shapes.items()}

    async def claim_buckets(self) -> list[str]:
        """Write this installation's id into each bucket that has none; the buckets that carry another's."""
        row = await self.db.fetchone("installation_id")
        assert row is not None
        ours = str(row["id"]).encode()
        await asyncio.to_thread(self.storage.ensure_buckets, tuple(self.buckets))
        return [b for b in self.buckets if not await asyncio.to_thread(self._claim, b, ours)]

    def _claim(self, bucket: str, ours: bytes) -> bool:
        try:
            with self.storage.open(bucket, MARKER) as fh:
                return fh.read(100).strip() == ours
        except ObjectMissing:
            self.storage.put(bucket, MARKER, io.BytesIO(ours), length=len(ours), content_type="text/plain")
            return True

    async def sweep(self, dry_run: bool = False) -> AsyncIterator[BucketReport]:
        """One report per bucket, as each is done. FailedPrecondition if a sweep runs elsewhere, or if a
        bucket belongs to another installation (then nothing is swept)."""
        async with self.db.connection() as lock_conn:
            row = await (await lock_conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (_LOCK,))).fetchone()
            if row is None or not row["got"]:
                raise FailedPrecondition("a storage sweep is already running", Reason.SWEEP_RUNNING)
            try:
                foreign = await self.claim_buckets()
                if foreign:
                    raise FailedPrecondition(
                        f"bucket(s) {', '.join(foreign)} belong to another installation (their {MARKER} names "
                        "another database): is DATABASE_URL right? Nothing was swept.",
                        Reason.STORAGE_NOT_OURS,
                    )
                for bucket, shapes in self.buckets.items():
                    report = await self._bucket(bucket, shapes, dry_run)
                    log.info(
                        "sweep%s %s: %d listed, %d orphans (%d bytes), %d partial uploads, %d young, %d foreign",
                        " (dry run)" if dry_run else "",
                        bucket,
                        report.listed,
                        report.orphans,
                        report.orphan_bytes,
                        report.partial_uploads,
                        report.young,
                        report.foreign,
                    )
                    yield report
            finally:
                await lock_conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK,))

    async def _bucket(self, bucket: str, shapes: list[re.Pattern[str]], dry_run: bool) -> BucketReport:
        report = BucketReport(bucket)
        cutoff = time.time() - self.grace_seconds
        async with self.db.connection() as conn, conn.transaction(), conn.cursor(name="referenced_keys") as refs:
            await refs.execute(QUERIES["referenced_keys"], {"bucket": bucket})
            rows = aiter(refs)
            ref: str | None = await _next_key(rows)
            async for obj in _listing(self.storage, bucket):
                if obj.key == MARKER:
                    continue
                report.listed += 1
                key_bytes = obj.key.encode(errors="surrogateescape")  # a file name need not be UTF-8
                while ref is not None and ref.encode() < key_bytes:
                    ref = await _next_key(rows)
                if ref == obj.key:
                    report.referenced += 1
                elif not any(shape.fullmatch(obj.key) for shape in shapes):
                    report.foreign += 1
                elif obj.modified > cutoff:
                    report.young += 1
                elif not await self._referenced(bucket, obj.key):
                    report.orphans += 1
                    report.orphan_bytes += obj.size
                    if len(report.sample) < SAMPLE:
                        report.sample.append(obj.key)
                    if not dry_run:
                        await asyncio.to_thread(self.storage.delete, bucket, obj.key)
                else:
                    report.referenced += 1  # committed since the cursor's snapshot
        async for upload in _partials(self.storage, bucket):
            if upload.started > cutoff:
                continue
            if upload.upload_id:  # a multipart upload of a key the service writes, not being built now?
                # A build streaming for longer than the grace period is still running, not abandoned.
                ours = any(shape.fullmatch(upload.key) for shape in shapes)
                if ours and await self._building(bucket, upload.key):
                    continue
            else:  # a filesystem put's temporary file (its mtime moves while it is written)
                ours = _PARTIAL_FILE.fullmatch(upload.key) is not None
            if not ours:
                continue
            report.partial_uploads += 1
            if not dry_run:
                await asyncio.to_thread(self.storage.abort_partial, upload)
        return report

    async def _building(self, bucket: str, key: str) -> bool:
        row = await self.db.fetchone("build_in_progress", bucket=bucket, object_key=key)
        return bool(row and row["found"])

    async def _referenced(self, bucket: str, key: str) -> bool:
        row = await self.db.fetchone("object_referenced", bucket=bucket, object_key=key)
        return bool(row and row["found"])


async def _next_key(rows: AsyncIterator[Any]) -> str | None:
    row = await anext(rows, None)
    return None if row is None else row["object_key"]


async def _listing(storage: ObjectStorage, bucket: str) -> AsyncIterator[ObjectInfo]:
    """The bucket's listing, a page of objects at a time from a thread (the SDKs' iterators block)."""
    async for page in _pages(storage.list(bucket)):
        for obj in page:
            yield obj


async def _partials(storage: ObjectStorage, bucket: str) -> AsyncIterator[PartialUpload]:
    async for page in _pages(storage.list_partial(bucket)):
        for upload in page:
            yield upload


async def _pages(items: Iterator[T], size: int = 1000) -> AsyncIterator[list[T]]:
    def take() -> list[T]:
        return [item for _, item in zip(range(size), items, strict=False)]

    while page := await asyncio.to_thread(take):
        yield page
