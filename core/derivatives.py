"""Attaching and removing derivatives under the concurrency contract.

- Bytes are uploaded first, outside any transaction, under a fresh key.
- Attaching locks the asset row and checks that its original is still the one the
  derivative was made from; if not, the upload is deleted and nothing is attached.
- One row per (asset, key): a replaced row's old bytes are deleted after commit.
So the database never points at a missing object, and no committed object lacks a row.

Several assets' results attach in one transaction (`attach_many`: the job runner's batches);
the contract holds per asset: one whose original changed is discarded alone, and per-key
failures are recorded only against the original they were tried on.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from psycopg.types.json import Jsonb

from core import failpoints
from core.database import Database
from core.errors import FailedPrecondition, NotFound, Reason
from core.media import EXTENSIONS, Spooled, pixel_size, resolve_media_type
from core.queue import JobQueue
from core.records import (
    Asset,
    AssetFailure,
    Derivative,
    DerivativesPayload,
    FailureClass,
    Job,
    JobKind,
    Location,
)
from core.shield import to_completion
from core.storage import ObjectStorage, delete_quietly

log = logging.getLogger("derivatives.derivatives")


@dataclass(frozen=True)
class Made:
    """A derivative already uploaded to storage, waiting to be attached."""

    key: str
    location: Location
    content_type: str
    size_bytes: int
    width: int
    height: int
    sha512: str
    metadata: dict[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Failed:
    """A derivative that could not be made, and why (one line, and its class: set where the failure is made)."""

    key: str
    reason: str
    failure_class: FailureClass = FailureClass.OTHER


@dataclass(frozen=True)
class Outcome:
    """One asset's render, to attach: what was made of the original `original_sha512`, and which keys failed."""

    asset_id: str
    original_sha512: str
    made: tuple[Made, ...] = ()
    failures: tuple[AssetFailure, ...] = ()


def object_key(asset_id: str, key: str, extension: str) -> str:
    return f"{asset_id}/{key}/{uuid.uuid4().hex}.{extension}"


def _row(asset_id: str, original_sha512: str, m: Made) -> dict[str, object]:
    """One element of upsert_derivatives' `rows`."""
    return {
        "asset_id": asset_id,
        "key": m.key,
        "content_type": m.content_type,
        "size_bytes": m.size_bytes,
        "width": m.width,
        "height": m.height,
        "sha512": m.sha512,
        "original_sha512": original_sha512,
        "bucket": m.location.bucket,
        "object_key": m.location.key,
        "metadata": m.metadata,
    }


class Derivatives:
    def __init__(self, db: Database, storage: ObjectStorage, queue: JobQueue, bucket: str) -> None:
        self.db = db
        self.storage = storage
        self.queue = queue
        self.bucket = bucket

    async def request(
        self,
        asset_ids: Iterable[str],
        only: Iterable[str] = (),
        exclude: Iterable[str] = (),
        lazy: bool = False,
        *,
        owner: str,
    ) -> Job:
        """Queue derivative creation for assets that must exist (NOT_FOUND lists those that do not)."""
        unique = list(dict.fromkeys(asset_ids))
        found = {r["asset_id"] for r in await self.db.fetchall("existing_asset_ids", asset_ids=unique)}
        missing = [a for a in unique if a not in found]
        if missing:
            shown = ", ".join(missing[:10]) + (" …" if len(missing) > 10 else "")
            raise NotFound(f"asset(s) not found: {shown}", Reason.ASSET_NOT_FOUND, asset_id=missing[0])
        payload = DerivativesPayload(tuple(unique), tuple(only), tuple(exclude), lazy)
        return await self.queue.enqueue(JobKind.CREATE_DERIVATIVES, payload, len(unique), owner)

    async def of_asset(self, asset_id: str) -> list[Derivative]:
        return [Derivative.from_row(r) for r in await self.db.fetchall("list_derivatives", asset_id=asset_id)]

    async def current_keys(self, assets: Iterable[Asset]) -> dict[str, set[str]]:
        """The keys each asset has a derivative of, made from its current original (a lazy run skips them)."""
        current = {a.asset_id: a.sha512 for a in assets}
        rows = await self.db.fetchall("derivative_keys_of_assets", asset_ids=list(current))
        out: dict[str, set[str]] = {}
        for r in rows:
            if r["original_sha512"] == current[r["asset_id"]]:
                out.setdefault(r["asset_id"], set()).add(r["key"])
        return out

    async def get(self, asset_id: str, key: str) -> Derivative | None:
        row = await self.db.fetchone("get_derivative", asset_id=asset_id, key=key)
        return Derivative.from_row(row) if row is not None else None

    async def attach(self, asset_id: str, original_sha512: str, made: list[Made]) -> list[Derivative] | None:
        """Attach `made` if the asset's original is still `original_sha512`.

        Returns the attached derivatives, or None when the asset is gone or its original
        changed (the uploads are deleted then). Runs to completion even if the caller is cancelled.
        """
        (attached,) = await self.attach_many([Outcome(asset_id, original_sha512, tuple(made))])
        return attached

    async def attach_many(self, outcomes: Sequence[Outcome]) -> list[list[Derivative] | None]:
        """Attach several assets' results, and record their failures, in one transaction.

        One entry per outcome, in order: its attached derivatives, or None when it made something but
        its asset is gone or its original changed (its uploads are deleted, its failures not recorded).
        Runs to completion even if the caller is cancelled.
        """
        return await to_completion(self._attach_many(list(outcomes)))

    async def _attach_many(self, outcomes: list[Outcome]) -> list[list[Derivative] | None]:
        made = [m for o in outcomes for m in o.made]
        if not made and not any(o.failures for o in outcomes):
            return [[] for _ in outcomes]
        garbage: list[Location] = []
        out: list[list[Derivative] | None] = [[] for _ in outcomes]
        try:
            async with self.db.transaction() as conn:
                # Every asset the transaction writes is locked first, in asset_id order, those with failures only
                # too (set_derivative_failures updates their rows): two batches that overlap never deadlock.
                ids = sorted({o.asset_id for o in outcomes if o.made or o.failures})
                rows = await self.db.fetchall("lock_assets_originals", conn, asset_ids=ids)
                current = {r["asset_id"]: r["sha512"] for r in rows}
                keep: dict[tuple[str, str], tuple[int, Made, str]] = {}  # (asset, key) -> (outcome, made, sha)
                failures: list[dict[str, str]] = []
                for i, o in enumerate(outcomes):
                    if o.made and current.get(o.asset_id) != o.original_sha512:
                        out[i] = None
                        garbage += [m.location for m in o.made]
                        continue
                    for m in o.made:
                        replaced = keep.get((o.asset_id, m.key))
                        if replaced is not None:  # the same asset twice in one batch: the later result wins
                            garbage.append(replaced[1].location)
                        keep[(o.asset_id, m.key)] = (i, m, o.original_sha512)
                    failures += [
                        {"asset_id": o.asset_id, "original_sha512": o.original_sha512, "key": f.key, "reason": f.reason}
                        for f in o.failures
                    ]
                if keep:
                    rows = await self.db.fetchall(
                        "upsert_derivatives",
                        conn,
                        rows=Jsonb([_row(a, sha, m) for (a, _), (_, m, sha) in keep.items()]),
                    )
                    index = {(a, m.key): i for (a, _), (i, m, _) in keep.items()}
                    for row in rows:
                        old = Location(row["old_bucket"], row["old_object_key"]) if row["old_object_key"] else None
                        if old is not None and old != Location(row["bucket"], row["object_key"]):
                            garbage.append(old)
                        attached = out[index[(row["asset_id"], row["key"])]]
                        assert attached is not None
                        attached.append(Derivative.from_row(row))
                if failures:
                    await failpoints.hold("failures_recorded")  # a drill overlaps two batches here
                    await self.db.execute("set_derivative_failures", conn, failures=Jsonb(failures))
        except Exception:
            garbage = await self._unreferenced(
                [o.asset_id for o in outcomes if o.made], made
            )  # the COMMIT itself may have gone through
            raise
        finally:
            await self.delete_objects(garbage)
        return out

    async def _unreferenced(self, asset_ids: list[str], made: list[Made]) -> list[Location]:
        """Uploads no row points at; none when that cannot be read (an orphan beats data loss)."""
        if not made:
            return []
        try:
            rows = await self.db.fetchall(
                "derivative_keys_referenced", asset_ids=asset_ids, object_keys=[m.location.key for m in made]
            )
        except Exception:
            return []
        referenced = {r["object_key"] for r in rows}
        return [m.location for m in made if m.location.key not in referenced]

    async def update(
        self,
        asset_id: str,
        key: str,
        declared_type: str,
        spooled: Spooled,
        metadata: dict[str, str],
        expected_original_sha512: str = "",
    ) -> Derivative:
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
        metadata: dict[str, str],
        expected_original_sha512: str,
    ) -> Derivative:
        try:
            media_type = resolve_media_type(declared_type, spooled.head)
            width, height = await asyncio.to_thread(pixel_size, spooled.path, media_type)
            made = Made(
                key=key,
                location=Location(self.bucket, object_key(asset_id, key, EXTENSIONS.get(media_type, "bin"))),
                content_type=media_type,
                size_bytes=spooled.size,
                width=width,
                height=height,
                sha512=spooled.sha512,
                metadata=metadata,
            )
            await asyncio.to_thread(
                self.storage.put_file, made.location.bucket, made.location.key, spooled.path, content_type=media_type
            )
        finally:
            spooled.path.unlink(missing_ok=True)
        return await self._attach_one(asset_id, expected_original_sha512, made)

    async def _attach_one(self, asset_id: str, expected_original_sha512: str, made: Made) -> Derivative:
        """Attach one upload, against the current original unless one is expected."""
        asset = await self.db.fetchone("get_asset", asset_id=asset_id)
        if asset is None:
            await self.delete_objects([made.location])
            raise NotFound(f"asset {asset_id!r} not found", Reason.ASSET_NOT_FOUND, asset_id=asset_id)
        sha = expected_original_sha512 or asset["sha512"]
        attached = await self.attach(asset_id, sha, [made])
        if attached is None:
            raise FailedPrecondition(
                f"asset {asset_id!r} original is no longer {sha[:16]}…; the derivative was not attached",
                Reason.ORIGINAL_CHANGED,
            )
        return attached[0]

    async def remove(self, asset_id: str, key: str) -> None:
        async with self.db.transaction() as conn:
            if await self.db.fetchone("lock_asset", conn, asset_id=asset_id) is None:
                raise NotFound(f"asset {asset_id!r} not found", Reason.ASSET_NOT_FOUND, asset_id=asset_id)
            row = await self.db.fetchone("delete_derivative", conn, asset_id=asset_id, key=key)
            if row is None:
                raise NotFound(f"asset {asset_id!r} has no derivative {key!r}", Reason.DERIVATIVE_NOT_FOUND, key=key)
        await self.delete_objects([Location.from_row(row)])

    async def delete_objects(self, locations: Iterable[Location]) -> None:
        await delete_quietly(self.storage, locations)
