"""Attaching several assets' results in one transaction keeps the concurrency contract per asset
(core/derivatives.py): an asset whose original was replaced while it rendered loses its results alone,
and per-key failures are recorded for the others. Real Postgres and file storage, in this process, and
a real server whose job attaches in batches."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from pathlib import Path

from core.database import Database
from core.derivatives import Derivatives, Made, Outcome, object_key
from core.failpoints import ENV as FAILPOINTS
from core.queue import PostgresQueue
from core.records import AssetFailure, Location
from core.storage import FileStorage
from derivatives.v1 import derivatives_pb2 as pb
from tests import images
from tests.harness import Postgres, ServerProcess, server_env
from tests.helpers import wait_job

BUCKET = "derivatives"


def sha(n: int) -> str:
    return f"{n:0128x}"


async def insert_asset(db: Database, asset_id: str, original_sha512: str) -> None:
    await db.execute(
        "insert_asset",
        asset_id=asset_id,
        content_type="image/jpeg",
        size_bytes=1,
        sha512=original_sha512,
        width=1000,
        height=800,
        filename="",
        bucket="originals",
        object_key=f"{asset_id}/original",
    )


def upload(storage: FileStorage, asset_id: str, key: str) -> Made:
    """What a pool task returns for one derivative: its bytes already stored under a fresh key."""
    location = Location(BUCKET, object_key(asset_id, key, "jpg"))
    storage.put(location.bucket, location.key, io.BytesIO(b"jpeg bytes"), content_type="image/jpeg")
    return Made(key, location, "image/jpeg", 10, 54, 40, sha(7))


def stored(storage: FileStorage, location: Location) -> bool:
    return storage.stat(location.bucket, location.key) is not None


def test_one_replaced_original_discards_only_its_own_results(postgres: Postgres, tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "storage")
    storage.ensure_buckets((BUCKET, "originals"))
    a, b, c = (f"batch-{name}-{uuid.uuid4().hex[:6]}" for name in "abc")

    async def scenario() -> None:
        db = Database(postgres.new_database("batch"), max_size=2)
        await db.open()
        try:
            await db.migrate()
            derivatives = Derivatives(db, storage, PostgresQueue(db), BUCKET)
            for asset_id in (a, b, c):
                await insert_asset(db, asset_id, sha(1))
            # a has an older thumb_mini (to be replaced) and a recorded failure of it (to be cleared).
            older = upload(storage, a, "thumb_mini")
            assert await derivatives.attach(a, sha(1), [older]) is not None
            await derivatives.attach_many([Outcome(a, sha(1), (), (AssetFailure(a, "thumb_mini", "earlier"),))])

            # The batch: a's and b's renders made something; c's made nothing and failed one key.
            made_a = [upload(storage, a, "thumb_mini"), upload(storage, a, "thumb_large")]
            made_b = [upload(storage, b, "thumb_mini")]
            outcomes = [
                Outcome(a, sha(1), tuple(made_a), (AssetFailure(a, "download_large", "decoder said no"),)),
                Outcome(b, sha(1), tuple(made_b), (AssetFailure(b, "download_large", "decoder said no"),)),
                Outcome(c, sha(1), (), (AssetFailure(c, "thumb_mini", "truncated"),)),
            ]
            # b's original is replaced while the batch rendered.
            await db.execute(
                "replace_original",
                asset_id=b,
                content_type="image/jpeg",
                size_bytes=2,
                sha512=sha(2),
                width=1000,
                height=800,
                filename="",
                bucket="originals",
                object_key=f"{b}/original-2",
            )

            attached = await derivatives.attach_many(outcomes)

            assert attached[1] is None  # b: discarded
            assert attached[0] is not None and sorted(d.key for d in attached[0]) == ["thumb_large", "thumb_mini"]
            assert attached[2] == []
            assert {d.key for d in await derivatives.of_asset(a)} == {"thumb_large", "thumb_mini"}
            assert await derivatives.of_asset(b) == []
            assert await derivatives.of_asset(c) == []
            # Storage agrees: a's new uploads kept and its replaced one deleted; b's uploads deleted.
            assert all(stored(storage, m.location) for m in made_a)
            assert not stored(storage, older.location)
            assert not any(stored(storage, m.location) for m in made_b)
            # Failures: recorded per asset and key against the original tried; none for b (its original is new).
            failures = {
                r["asset_id"]: r["derivative_failures"] for r in await db.fetchall("get_assets", asset_ids=[a, b, c])
            }
            assert set(failures[a]) == {"download_large"}  # thumb_mini's earlier failure cleared by the attach
            assert failures[a]["download_large"]["reason"] == "decoder said no"
            assert failures[b] == {}
            assert set(failures[c]) == {"thumb_mini"} and failures[c]["thumb_mini"]["reason"] == "truncated"
        finally:
            await db.close()

    asyncio.run(scenario())


def test_the_same_asset_twice_in_a_batch_keeps_the_later_result(postgres: Postgres, tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "storage")
    storage.ensure_buckets((BUCKET,))
    asset_id = f"batch-twice-{uuid.uuid4().hex[:6]}"

    async def scenario() -> None:
        db = Database(postgres.new_database("batch"), max_size=2)
        await db.open()
        try:
            await db.migrate()
            derivatives = Derivatives(db, storage, PostgresQueue(db), BUCKET)
            await insert_asset(db, asset_id, sha(1))
            first, second = upload(storage, asset_id, "thumb_mini"), upload(storage, asset_id, "thumb_mini")
            attached = await derivatives.attach_many([Outcome(asset_id, sha(1), (m,)) for m in (first, second)])
            assert attached[0] == [] and attached[1] is not None and len(attached[1]) == 1
            (row,) = await derivatives.of_asset(asset_id)
            assert row.location == second.location
            assert stored(storage, second.location) and not stored(storage, first.location)
        finally:
            await db.close()

    asyncio.run(scenario())


def test_a_job_discards_the_replaced_asset_alone(postgres: Postgres, tmp_path: Path) -> None:
    """End to end: the server holds each batch between upload and attach (a failpoint) while b's original is
    replaced; the job succeeds, a and c get their thumbnails, b's uploads are deleted and its failure says why."""
    env = server_env(
        "file",
        postgres.new_database("batchjob"),
        tmp_path / "data",
        None,
        DERIVATIVES_WORKERS="2",
        **{FAILPOINTS: "derivatives_rendered~3"},
    )
    server = ServerProcess(env, tmp_path / "server.log").start()
    try:
        with server.channel() as channel:
            stub = server.stub(channel)
            ids = [f"batchjob-{name}-{uuid.uuid4().hex[:6]}" for name in "abc"]
            for asset_id in ids:
                stub.PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=images.jpeg(400, 300), skip_derivatives=True))
            a, b, c = ids
            job = stub.CreateDerivatives(pb.CreateDerivativesRequest(asset_ids=ids, only=["thumb_mini"]))
            storage, bucket = server.storage(), server.settings.bucket_derivatives
            deadline = time.monotonic() + 60
            while not list(storage.list(bucket, f"{b}/thumb_mini/")):  # uploaded; held at least 3 s before attach
                assert time.monotonic() < deadline, "b's thumbnail was never uploaded"
                time.sleep(0.02)
            stub.PutAsset(pb.PutAssetRequest(asset_id=b, data=images.png(500, 300), skip_derivatives=True))

            done = wait_job(stub, job.job_id)

            assert (done.stage, done.done, done.total) == (pb.STAGE_SUCCEEDED, 3, 3)
            assert [(f.asset_id, f.key) for f in done.failures] == [(b, "")]
            assert "original replaced" in done.failures[0].reason
            for asset_id in (a, c):
                shown = stub.GetAsset(pb.GetAssetRequest(asset_id=asset_id))
                assert [d.key for d in shown.derivatives if d.original_sha512 == shown.sha512] == ["thumb_mini"]
            assert list(stub.GetAsset(pb.GetAssetRequest(asset_id=b)).derivatives) == []
            assert list(storage.list(bucket, f"{b}/")) == []  # the discarded upload is gone
    finally:
        assert server.stop() == 0, server.tail()
