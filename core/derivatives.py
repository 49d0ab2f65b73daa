"""Attaching and removing derivatives under the concurrency contract.

- Bytes are uploaded first, outside any transaction, under a fresh key.
- Attaching locks the asset row and checks that its original is still the one the
  derivative was made from; if not, the upload is deleted and nothing is attached.
- One row per (asset, key): a replaced row's old bytes are deleted after commit.
So the database never points at a missing object, and no committed object lacks a row.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from core.database import Database, Row
from core.errors import FailedPrecondition, NotFound
from core.media import EXTENSIONS, Spooled, pixel_size, resolve_media_type
from core.shield import to_completion
from core.storage import ObjectStorage, delete_quietly

log = logging.getLogger("derivatives.derivatives")


@dataclass(frozen=True)
class Made:
    """A derivative already uploaded to storage, waiting to be attached."""

    key: str
    bucket: str
    object_key: str
    content_type: str
    size_bytes: int
    width: int
    height: int
    sha512: str
    metadata: dict[str, Any]


def object_key(asset_id: str, key: str, extension: str) -> str:
    return f"{asset_id}/{key}/{uuid.uuid4().hex}.{extension}"


class Derivatives:
    def __init__(self, db: Database, storage: ObjectStorage, bucket: str) -> None:
        self.db = db
        self.storage = storage
        self.bucket = bucket

    async def attach(self, asset_id: str, original_sha512: str, made: list[Made]) -> list[Row] | None:
        """Attach `made` if the asset's original is still `original_sha512`.

        Returns the attached rows, or None when the asset is gone or its original
        changed (the uploads are deleted then). Runs to completion even if the caller is cancelled.
        """
        return await to_completion(self._attach(asset_id, original_sha512, made))

    async def _attach(self, asset_id: str, original_sha512: str, made: list[Made]) -> list[Row] | None:
        garbage: list[tuple[str, str]] = []
        attached: list[Row] = []
        try:
            async with self.db.transaction() as conn:
                asset = await self.db.fetchone("lock_asset", conn, asset_id=asset_id)
                if asset is None or asset["sha512"] != original_sha512:
                    garbage = [(m.bucket, m.object_key) for m in made]
                    return None
                for m in made:
                    row = await self.db.fetchone(
                        "upsert_derivative",
                        conn,
                        asset_id=asset_id,
                        key=m.key,
                        content_type=m.content_type,
                        size_bytes=m.size_bytes,
                        width=m.width,
                        height=m.height,
                        sha512=m.sha512,
                        original_sha512=original_sha512,
                        bucket=m.bucket,
                        object_key=m.object_key,
                        metadata=Jsonb(m.metadata),
                    )
                    assert row is not None
                    if row["old_object_key"] and (row["old_bucket"], row["old_object_key"]) != (m.bucket, m.object_key):
                        garbage.append((row["old_bucket"], row["old_object_key"]))
                    attached.append(row)
        except Exception:
            garbage = await self._unreferenced(asset_id, made)  # the COMMIT itself may have gone through
            raise
        finally:
            await self.delete_objects(garbage)
        return attached

    async def _unreferenced(self, asset_id: str, made: list[Made]) -> list[tuple[str, str]]:
        """Uploads no row points at; none when that cannot be read (an orphan beats data loss)."""
        try:
            rows = await self.db.fetchall(
                "derivative_keys_referenced", asset_id=asset_id, object_keys=[m.object_key for m in made]
            )
        except Exception:
            return []
        referenced = {r["object_key"] for r in rows}
        return [(m.bucket, m.object_key) for m in made if m.object_key not in referenced]

    async def update(
        self,
        asset_id: str,
        key: str,
        declared_type: str,
        spooled: Spooled,
        metadata: dict[str, Any],
        expected_original_sha512: str = "",
    ) -> Row:
        """UpdateDerivative: store bytes made elsewhere as `key` (consumes the temp file).

        Upload and attach are one unit, run to completion even if the caller is cancelled.
        """
        return await to_completion(
            self._update(asset_id, key, declared_type, spooled, metadata, expected_original_sha512)
        )

    async def _update(
        self,
        asset_id: str,
        key: str,
        declared_type: str,
        spooled: Spooled,
        metadata: dict[str, Any],
        expected_original_sha512: str,
    ) -> Row:
        try:
            media_type = resolve_media_type(declared_type, spooled.head, field="header.content_type")
            width, height = await asyncio.to_thread(pixel_size, spooled.path, media_type)
            made = Made(
                key=key,
                bucket=self.bucket,
                object_key=object_key(asset_id, key, EXTENSIONS.get(media_type, "bin")),
                content_type=media_type,
                size_bytes=spooled.size,
                width=width,
                height=height,
                sha512=spooled.sha512,
                metadata=metadata,
            )
            await asyncio.to_thread(
                self.storage.put_file, made.bucket, made.object_key, spooled.path, content_type=media_type
            )
        finally:
            spooled.path.unlink(missing_ok=True)
        return await self.attach_one(asset_id, expected_original_sha512, made)

    async def attach_one(self, asset_id: str, expected_original_sha512: str, made: Made) -> Row:
        """UpdateDerivative: attach one upload, against the current original unless one is expected."""
        asset = await self.db.fetchone("get_asset", asset_id=asset_id)
        if asset is None:
            await self.delete_objects([(made.bucket, made.object_key)])
            raise NotFound(f"asset {asset_id!r} not found")
        sha = expected_original_sha512 or asset["sha512"]
        rows = await self.attach(asset_id, sha, [made])
        if rows is None:
            raise FailedPrecondition(
                f"asset {asset_id!r} original is no longer {sha[:16]}…; the derivative was not attached"
            )
        return rows[0]

    async def record_failure(self, asset_id: str, original_sha512: str, key: str, reason: str) -> None:
        await self.db.execute(
            "set_derivative_failure", asset_id=asset_id, original_sha512=original_sha512, key=key, reason=reason
        )

    async def remove(self, asset_id: str, key: str) -> None:
        async with self.db.transaction() as conn:
            if await self.db.fetchone("lock_asset", conn, asset_id=asset_id) is None:
                raise NotFound(f"asset {asset_id!r} not found")
            row = await self.db.fetchone("delete_derivative", conn, asset_id=asset_id, key=key)
            if row is None:
                raise NotFound(f"asset {asset_id!r} has no derivative {key!r}")
        await self.delete_objects([(row["bucket"], row["object_key"])])

    async def delete_objects(self, locations: list[tuple[str, str]]) -> None:
        await delete_quietly(self.storage, locations)
