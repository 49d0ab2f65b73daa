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

from core import metrics
from core.config import load_settings
from core.database import Database
from core.definitions import load_registry
from core.derivatives import Derivatives, Made, Outcome, object_key
from core.domain import open_domain
from core.failpoints import ENV as FAILPOINTS
from core.queue import PostgresQueue
from core.records import AssetFailure, FailureClass, Job, Location
from core.storage import FileStorage
from derivatives.v1 import derivatives_pb2 as pb
from tests import images
from tests.harness import Postgres, ServerProcess, server_env
from tests.helpers import wait_job
from worker.pool import WorkerPool
from worker.render import Batch, Renderer

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


def stored_failures(database_url: str, job_id: str) -> list[tuple[str, str, FailureClass]]:
    """A job's failures as Postgres holds them (jobs.failures), each with its class."""

    async def read() -> list[tuple[str, str, FailureClass]]:
        db = Database(database_url, max_size=1)
        await db.open()
        try:
            row = await db.fetchone("get_job", job_id=uuid.UUID(job_id))
            assert row is not None
            return [(f.asset_id, f.key, f.failure_class) for f in Job.from_row(row).failures]
        finally:
            await db.close()

    return asyncio.run(read())


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


def test_a_render_classes_the_failures_it_makes(postgres: Postgres, tmp_path: Path) -> None:
    """worker/render.py's own failures, on real parts: a pool process that dies on every attempt (a memory ceiling
    too low for it to start) fails the asset's keys as worker_crashed; an asset gone before its render is
    asset_deleted. The failure metric counts each under its class. (original_replaced: the test below.)"""
    env = {"DERIVATIVES_DATA_DIR": str(tmp_path / "data"), "DERIVATIVES_WORKER_MEMORY": "1"}
    settings = load_settings(env)
    crashed_id, gone_id = (f"classes-{name}-{uuid.uuid4().hex[:6]}" for name in ("crashed", "gone"))

    def count(failure_class: FailureClass) -> float:
        found = metrics.REGISTRY.get_sample_value("derivatives_derivative_failures_total", {"reason": failure_class})
        return found or 0.0

    async def scenario() -> None:
        domain = await open_domain(settings, load_registry(), postgres.new_database("classes"), "test")
        pool = WorkerPool(settings, 1)
        try:
            await insert_asset(domain.db, crashed_id, sha(1))
            renderer = Renderer(domain.assets, domain.derivatives, domain.registry, pool)
            await renderer.derive_many((crashed_id, gone_id), only=("thumb_mini",), on_batch=collect)
        finally:
            pool.shutdown()
            await domain.close()

    failures: list[AssetFailure] = []

    async def collect(batch: Batch) -> None:
        failures.extend(batch.failures)

    before = {c: count(c) for c in FailureClass}
    asyncio.run(scenario())
    assert sorted((f.asset_id, f.key, f.failure_class) for f in failures) == [
        (crashed_id, "thumb_mini", FailureClass.WORKER_CRASHED),
        (gone_id, "", FailureClass.ASSET_DELETED),
    ]
    moved = {c: count(c) - before[c] for c in FailureClass if count(c) != before[c]}
    assert moved == {FailureClass.WORKER_CRASHED: 1, FailureClass.ASSET_DELETED: 1}


def test_a_job_discards_the_replaced_asset_alone(postgres: Postgres, tmp_path: Path) -> None:
    """End to end: the server holds every batch between upload and attach (a failpoint) until b's original is
    replaced; the job succeeds, a and c get their thumbnails, b's uploads are deleted and its failure says why."""
    replaced = tmp_path / "b-replaced"  # the failpoint holds each batch until this file exists
    database_url = postgres.new_database("batchjob")
    env = server_env(
        "file",
        database_url,
        tmp_path / "data",
        None,
        DERIVATIVES_WORKERS="2",
        **{FAILPOINTS: f"derivatives_rendered?{replaced}"},
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
            # Uploaded: rendered from the first original. No batch is attached before `replaced` exists.
            while not list(storage.list(bucket, f"{b}/thumb_mini/")):
                assert time.monotonic() < deadline, "b's thumbnail was never uploaded"
                time.sleep(0.02)
            stub.PutAsset(pb.PutAssetRequest(asset_id=b, data=images.png(500, 300), skip_derivatives=True))
            replaced.touch()

            done = wait_job(stub, job.job_id)

            assert (done.stage, done.done, done.total) == (pb.STAGE_SUCCEEDED, 3, 3)
            assert [(f.asset_id, f.key) for f in done.failures] == [(b, "")]
            assert "original replaced" in done.failures[0].reason
            assert stored_failures(database_url, done.job_id) == [(b, "", FailureClass.ORIGINAL_REPLACED)]
            for asset_id in (a, c):
                shown = stub.GetAsset(pb.GetAssetRequest(asset_id=asset_id))
                assert [d.key for d in shown.derivatives if d.original_sha512 == shown.sha512] == ["thumb_mini"]
            assert list(stub.GetAsset(pb.GetAssetRequest(asset_id=b)).derivatives) == []
            assert list(storage.list(bucket, f"{b}/")) == []  # the discarded upload is gone
    finally:
        assert server.stop() == 0, server.tail()
