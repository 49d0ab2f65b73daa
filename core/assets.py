"""Assets: registering, replacing, reading and deleting originals.

Bytes go to storage first, outside any transaction, under a fresh key; the row
changes in one short transaction; objects the change made unreachable are deleted
after commit. A failure before commit deletes the fresh upload, so a failed put
leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import failpoints
from core.bundles import StoredInputs
from core.config import Settings, split_list
from core.database import Database, Row
from core.definitions import Registry
from core.errors import FailedPrecondition, NotFound, PermissionDenied, Reason, quote
from core.media import SizeLimit, Spooled, pixel_size, resolve_media_type, spool_stream
from core.plan import derivatives_created
from core.queue import JobQueue
from core.records import Asset, AssetView, Derivative, DerivativesPayload, JobKind, Location
from core.shield import to_completion
from core.storage import ObjectStorage, check_location, delete_quietly

log = logging.getLogger("derivatives.assets")


@dataclass(frozen=True)
class ImportSources:
    """Where PutAsset's storage_ref may copy from: DERIVATIVES_IMPORT_SOURCES, never the service's buckets.

    An entry is a bucket (any key in it) or bucket/prefix (keys under that folder: `prefix/...`).
    """

    entries: tuple[tuple[str, str], ...]
    own_buckets: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings, definition_buckets: Iterable[str] = ()) -> ImportSources:
        entries = []
        for source in split_list(settings.import_sources):
            bucket, _, prefix = source.partition("/")
            entries.append((bucket, prefix.strip("/")))
        return cls(tuple(entries), frozenset((*settings.buckets, *definition_buckets)))

    def check(self, bucket: str, key: str) -> None:
        if bucket not in self.own_buckets:
            for allowed, prefix in self.entries:
                if bucket == allowed and (not prefix or key.startswith(prefix + "/")):
                    return
        where = "one of the service's own buckets" if bucket in self.own_buckets else "not an import source"
        raise PermissionDenied(
            f"storage_ref {bucket}/{quote(key, 60)} is {where}; allowed: "
            f"{', '.join(f'{b}/{p}' if p else b for b, p in self.entries) or 'none (DERIVATIVES_IMPORT_SOURCES)'}",
            Reason.SOURCE_NOT_ALLOWED,
            bucket=bucket,
        )


class Assets:
    def __init__(
        self,
        db: Database,
        storage: ObjectStorage,
        settings: Settings,
        registry: Registry,
        queue: JobQueue,
        stored_inputs: StoredInputs,
    ) -> None:
        self.stored_inputs = stored_inputs
        self.db = db
        self.storage = storage
        self.settings = settings
        self.registry = registry
        self.queue = queue
        self.import_sources = ImportSources.from_settings(settings, registry.buckets())
        # Uploads are spooled here; made on first use, so a host that takes no uploads needs no writable disk.
        self.tmp_dir = settings.data_path / "tmp"

    def sweep_tmp(self, older_than: float = 3600.0) -> None:
        """Delete uploads left by a crash or a cancelled call (spooled files live only for one request)."""
        cutoff = time.time() - older_than
        for path in self.tmp_dir.glob("upload-*"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    def temp_path(self) -> Path:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="upload-")
        os.close(fd)
        return Path(name)

    def original_limit(self, field: str = "original") -> SizeLimit:
        return SizeLimit(self.settings.max_original_bytes, field, Reason.ORIGINAL_TOO_LARGE)

    async def spool_from_storage(self, bucket: str, key: str) -> Spooled:
        """Copy an object from an allowed import source into a temp file.

        The location is checked before any storage call: a malformed one is INVALID_ARGUMENT, one
        outside DERIVATIVES_IMPORT_SOURCES (or in the service's own buckets) PERMISSION_DENIED.
        """
        check_location(bucket, key)
        self.import_sources.check(bucket, key)
        limit = self.original_limit("location")
        path = self.temp_path()

        def copy() -> Spooled:
            with self.storage.open(bucket, key) as src:
                return spool_stream(src, path, limit)

        try:
            return await asyncio.to_thread(copy)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    async def put(
        self,
        asset_id: str,
        declared_type: str,
        spooled: Spooled,
        *,
        filename: str = "",
        skip_derivatives: bool = False,
        owner: str,
    ) -> AssetView:
        """Store `spooled` as the asset's original (consumes the temp file).

        Runs to completion even if the caller is cancelled: the upload and the commit are one unit.
        The derivatives job it queues belongs to `owner` (and counts against its job limit).
        """
        return await to_completion(self._put(asset_id, declared_type, spooled, filename, skip_derivatives, owner))

    async def _put(
        self, asset_id: str, declared_type: str, spooled: Spooled, filename: str, skip_derivatives: bool, owner: str
    ) -> AssetView:
        try:
            media_type = resolve_media_type(declared_type, spooled.head)
            width, height = await asyncio.to_thread(pixel_size, spooled.path, media_type)
            bucket = self.settings.bucket_originals
            key = f"{asset_id}/{uuid.uuid4().hex}"
            await asyncio.to_thread(self.storage.put_file, bucket, key, spooled.path, content_type=media_type)
            await failpoints.hold("original_stored")  # uploaded, not committed: the sweeper's case
        finally:
            spooled.path.unlink(missing_ok=True)
        values = dict(
            asset_id=asset_id,
            content_type=media_type,
            size_bytes=spooled.size,
            sha512=spooled.sha512,
            width=width,
            height=height,
            filename=filename,
            bucket=bucket,
            object_key=key,
        )
        garbage: list[Location] = []
        try:
            asset = await self._commit_original(values, skip_derivatives, owner, garbage)
        except Exception:
            # The commit may still have happened (the error came during COMMIT): delete the
            # upload only if no row points at it; if we cannot tell, an orphan beats data loss.
            garbage = []
            referenced = await _quietly(self.db.fetchone("original_referenced", bucket=bucket, object_key=key))
            if referenced is None:
                garbage = [Location(bucket, key)]
            raise
        finally:
            await self.delete_objects(garbage)
        return await self.get(asset.asset_id)

    async def _commit_original(self, values: Row, skip_derivatives: bool, owner: str, garbage: list[Location]) -> Asset:
        async with self.db.transaction() as conn:
            current = await self.db.fetchone("lock_asset", conn, asset_id=values["asset_id"])
            if current is None:
                row = await self.db.fetchone("insert_asset", conn, **values)
                if row is None:  # created concurrently since our lock attempt: replace it instead
                    current = await self.db.fetchone("lock_asset", conn, asset_id=values["asset_id"])
            if current is not None:
                if (current["sha512"], current["content_type"]) == (values["sha512"], values["content_type"]):
                    # Same bytes again: keep the stored original and its derivatives.
                    garbage.append(Location.from_row(values))
                    return Asset.from_row(current)
                old = await self.db.fetchall("delete_derivatives_of_asset", conn, asset_id=values["asset_id"])
                row = await self.db.fetchone("replace_original", conn, **values)
                garbage.append(Location.from_row(current))
                garbage.extend(Location.from_row(d) for d in old)
                # The works it belongs to have new bundle inputs, visible when this commits.
                await self.stored_inputs.refresh_works_of(conn, values["asset_id"])
            assert row is not None
            asset = Asset.from_row(row)
            if not skip_derivatives:  # queued in this transaction: it exists iff the new original does
                payload = DerivativesPayload((asset.asset_id,))
                await self.queue.enqueue(JobKind.CREATE_DERIVATIVES, payload, 1, owner, conn)
            return asset

    async def find(self, asset_id: str) -> Asset | None:
        row = await self.db.fetchone("get_asset", asset_id=asset_id)
        return Asset.from_row(row) if row is not None else None

    async def find_many(self, asset_ids: Iterable[str]) -> dict[str, Asset]:
        """The assets of `asset_ids` that exist, by id (one round trip)."""
        rows = await self.db.fetchall("get_assets", asset_ids=list(asset_ids))
        return {r["asset_id"]: Asset.from_row(r) for r in rows}

    async def get(self, asset_id: str) -> AssetView:
        """The asset, its derivatives (one round trip), and whether every derivative the plan expects exists."""
        row = await self.db.fetchone("get_asset_with_derivatives", asset_id=asset_id)
        if row is None:
            raise NotFound(f"asset {asset_id!r} not found", Reason.ASSET_NOT_FOUND, asset_id=asset_id)
        asset = Asset.from_row(row)
        derivatives = tuple(Derivative.from_json(d) for d in row["derivatives"])
        return AssetView(asset, derivatives, derivatives_created(self.registry, asset, (d.key for d in derivatives)))

    async def list_ids(self, after: str, limit: int) -> list[str]:
        return [r["asset_id"] for r in await self.db.fetchall("list_asset_ids", after=after, limit=limit)]

    async def delete(self, asset_id: str) -> None:
        garbage: list[Location] = []
        async with self.db.transaction() as conn:
            asset = await self.db.fetchone("lock_asset", conn, asset_id=asset_id)
            if asset is None:
                raise NotFound(f"asset {asset_id!r} not found", Reason.ASSET_NOT_FOUND, asset_id=asset_id)
            works = await self.db.fetchall("works_containing_asset", conn, asset_id=asset_id)
            if works:
                names = ", ".join(w["work_id"] for w in works[:10]) + (" …" if len(works) > 10 else "")
                raise FailedPrecondition(
                    f"asset {asset_id!r} is a member of work(s) {names}; remove it there first",
                    Reason.ASSET_IN_WORK,
                    asset_id=asset_id,
                    work_id=works[0]["work_id"],
                )
            old = await self.db.fetchall("delete_derivatives_of_asset", conn, asset_id=asset_id)
            await self.db.execute("delete_asset", conn, asset_id=asset_id)
            garbage = [
                Location.from_row(asset),
                *(Location.from_row(d) for d in old),
            ]
        await self.delete_objects(garbage)

    async def delete_objects(self, locations: list[Location]) -> None:
        await delete_quietly(self.storage, locations)


async def _quietly(query: Coroutine[Any, Any, Row | None]) -> Row | bool | None:
    """A check made while handling another error: its own failure reads as "cannot tell" (True)."""
    try:
        return await query
    except Exception:
        return True
