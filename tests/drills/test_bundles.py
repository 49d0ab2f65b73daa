"""Bundle drills: a builder killed mid-build, the cache reaper, the S3 lifecycle backstop."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import psycopg

from derivatives.v1 import derivatives_pb2 as pb
from tests import images
from tests.harness import Postgres, S3Endpoint, ServerProcess, server_env
from tests.helpers import Stub, expect_error


def _work(stub: Stub, n: int, maker: Callable[[], bytes] = lambda: images.tiff(1500, 1000)) -> str:
    ids = [f"k{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
    data = maker()  # distinct assets, the same bytes: each still needs its own page derivative
    for asset_id in ids:
        stub.PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=data, skip_derivatives=True))
    work_id = f"w-{uuid.uuid4().hex[:8]}"
    stub.PutWork(pb.PutWorkRequest(work_id=work_id, title="Drill work", member_asset_ids=ids))
    return work_id


def test_killed_builder_bundle_is_finished_by_another_worker(tmp_path: Path, postgres: Postgres) -> None:
    env = server_env(
        "file",
        postgres.new_database("bkill"),
        tmp_path / "data",
        None,
        DERIVATIVES_WORKERS="1",
        DERIVATIVES_JOB_LEASE_SECONDS="2",
    )
    first = ServerProcess(env, tmp_path / "first.log").start()
    with first.channel() as channel:
        stub = first.stub(channel)
        # Every member needs its 1200 px page rendered from a 4000 px TIFF on one process: several seconds.
        work_id = _work(stub, 40, lambda: images.tiff(4000, 3000))
        bundle = stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=work_id, kind=pb.BUNDLE_KIND_PDF))
        for event in stub.WatchProgress(pb.WatchProgressRequest(bundle_id=bundle.bundle_id), timeout=120):
            if event.stage == pb.STAGE_RUNNING and event.done >= 1:
                break
    first.stop(signal.SIGKILL)
    with psycopg.connect(env["DATABASE_URL"]) as conn:  # the kill must have landed mid-build, or this proves nothing
        stage = conn.execute(
            "SELECT j.stage FROM jobs j JOIN bundles b ON b.job_id = j.job_id WHERE b.bundle_id = %s",
            (bundle.bundle_id,),
        ).fetchone()
    assert stage == ("running",), f"the first builder was not killed mid-build: {stage}"
    second = ServerProcess(env, tmp_path / "second.log").start()
    try:
        with second.channel() as channel:
            stub = second.stub(channel)
            events = list(stub.WatchProgress(pb.WatchProgressRequest(bundle_id=bundle.bundle_id), timeout=180))
            final = events[-1]
            assert final.stage == pb.STAGE_SUCCEEDED and final.bundle.status == pb.BUNDLE_STATUS_SUCCESS
            assert final.bundle.bundle_id == bundle.bundle_id
            with psycopg.connect(env["DATABASE_URL"]) as conn:
                attempts = conn.execute(
                    "SELECT j.attempts FROM jobs j JOIN bundles b ON b.job_id = j.job_id WHERE b.bundle_id = %s",
                    (bundle.bundle_id,),
                ).fetchone()
            assert attempts is not None and attempts[0] >= 2  # taken over, not finished by the first builder
            data = b"".join(r.chunk for r in stub.ReadBundle(pb.ReadBundleRequest(bundle_id=bundle.bundle_id)))
            assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
            assert final.bundle.size_bytes == len(data)
    finally:
        assert second.stop() == 0


def test_reaper_deletes_bundles_nobody_asked_for(tmp_path: Path, postgres: Postgres) -> None:
    env = server_env(
        "file",
        postgres.new_database("reap"),
        tmp_path / "data",
        None,
        DERIVATIVES_BUNDLE_IDLE_SECONDS="3",
        DERIVATIVES_BUNDLE_REAP_INTERVAL="0.5",
        DERIVATIVES_BUNDLE_ACCESS_FLUSH="1",  # reads written each second; the reaper spares only 2 s
    )
    server = ServerProcess(env, tmp_path / "server.log").start()
    try:
        with server.channel() as channel:
            stub = server.stub(channel)
            work_id = _work(stub, 2, lambda: images.jpeg(400, 300))
            bundle = stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=work_id, kind=pb.BUNDLE_KIND_ZIP))
            list(stub.WatchProgress(pb.WatchProgressRequest(bundle_id=bundle.bundle_id), timeout=60))
            with psycopg.connect(env["DATABASE_URL"]) as conn:
                bucket, key = conn.execute(
                    "SELECT bucket, object_key FROM bundles WHERE bundle_id = %s", (bundle.bundle_id,)
                ).fetchone()  # type: ignore[misc]
            storage = server.storage()
            # Reading it counts as an access and keeps it a little longer...
            for _ in range(4):
                time.sleep(1)
                list(stub.ReadBundle(pb.ReadBundleRequest(bundle_id=bundle.bundle_id)))
            assert storage.stat(bucket, key) is not None
            # ...then, untouched past the idle window, row and object go.
            deadline = time.monotonic() + 30
            while storage.stat(bucket, key) is not None:
                assert time.monotonic() < deadline, "reaper never deleted the idle bundle"
                time.sleep(0.2)
            expect_error(
                grpc.StatusCode.NOT_FOUND,
                lambda: list(stub.ReadBundle(pb.ReadBundleRequest(bundle_id=bundle.bundle_id))),
            )
            rebuilt = stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=work_id, kind=pb.BUNDLE_KIND_ZIP))
            assert rebuilt.bundle_id != bundle.bundle_id  # asking again builds it anew
    finally:
        assert server.stop() == 0


def test_size_budget_evicts_least_recently_used(tmp_path: Path, postgres: Postgres) -> None:
    env = server_env(
        "file",
        postgres.new_database("lru"),
        tmp_path / "data",
        None,
        DERIVATIVES_BUNDLE_CACHE_BYTES="1",
        DERIVATIVES_BUNDLE_REAP_INTERVAL="0.5",
        DERIVATIVES_BUNDLE_ACCESS_FLUSH="1",  # the reaper spares bundles accessed within 2 s, not 10
    )
    server = ServerProcess(env, tmp_path / "server.log").start()
    try:
        with server.channel() as channel:
            stub = server.stub(channel)
            work_id = _work(stub, 1, lambda: images.jpeg(300, 200))
            bundle = stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=work_id, kind=pb.BUNDLE_KIND_ZIP))
            list(stub.WatchProgress(pb.WatchProgressRequest(bundle_id=bundle.bundle_id), timeout=60))
            deadline = time.monotonic() + 30
            while True:  # a 1-byte budget holds nothing: the bundle is evicted
                try:
                    stub.WatchProgress(pb.WatchProgressRequest(bundle_id=bundle.bundle_id)).next()
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.NOT_FOUND
                    break
                assert time.monotonic() < deadline, "over-budget bundle never evicted"
                time.sleep(0.2)
    finally:
        assert server.stop() == 0


def test_a_bundle_another_process_hands_out_is_not_reaped(tmp_path: Path, postgres: Postgres) -> None:
    """Access records are written at most once per flush interval F; the reaper spares 2F, so a reaper in
    one process never deletes a bundle another process has just handed out, however tight its budget."""
    database, data = postgres.new_database("handout"), tmp_path / "data"
    flush = {"DERIVATIVES_BUNDLE_ACCESS_FLUSH": "1"}
    server = ServerProcess(server_env("file", database, data, None, **flush), tmp_path / "server.log")
    reaper = ServerProcess(
        server_env(
            "file",
            database,
            data,
            None,
            DERIVATIVES_WORKERS="0",
            DERIVATIVES_BUNDLE_CACHE_BYTES="1",  # holds nothing: every bundle not spared is evicted
            DERIVATIVES_BUNDLE_REAP_INTERVAL="0.2",
            **flush,
        ),
        tmp_path / "reaper.log",
    )
    server.start()
    reaper.start()
    try:
        with server.channel() as channel:
            stub = server.stub(channel)
            work_id = _work(stub, 2, lambda: images.jpeg(400, 300))
            storage = server.storage()
            handed_out = 0
            location = None
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # a visitor polling, as the download button does
                bundle = stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=work_id, kind=pb.BUNDLE_KIND_ZIP))
                if bundle.status == pb.BUNDLE_STATUS_SUCCESS:
                    handed_out += 1
                    if location is None:
                        with psycopg.connect(database) as conn:
                            location = conn.execute(
                                "SELECT bucket, object_key FROM bundles WHERE bundle_id = %s", (bundle.bundle_id,)
                            ).fetchone()
                    assert location is not None
                    assert storage.stat(*location) is not None, "a bundle just handed out was reaped"
                time.sleep(0.25)
            assert handed_out >= 5, handed_out
            # Nobody asks any more: past 2F the reaper takes it (so it was running all along).
            assert location is not None
            deadline = time.monotonic() + 30
            while storage.stat(*location) is not None:
                assert time.monotonic() < deadline, "the reaper never evicted the bundle"
                time.sleep(0.2)
    finally:
        assert reaper.stop() == 0
        assert server.stop() == 0


def test_s3_bundle_bucket_gets_a_lifecycle_rule(tmp_path: Path, postgres: Postgres) -> None:
    s3 = S3Endpoint(tmp_path / "s3.log")
    env = server_env(
        "s3", postgres.new_database("life"), tmp_path / "data", s3, DERIVATIVES_BUNDLE_IDLE_SECONDS=str(3 * 86400)
    )
    server = ServerProcess(env, tmp_path / "server.log").start()
    try:
        storage = server.storage()
        rules = storage.client.get_bucket_lifecycle(server.settings.bucket_bundles).rules  # type: ignore[attr-defined]
        assert len(rules) == 1
        assert rules[0].expiration.days == 4
        assert rules[0].abort_incomplete_multipart_upload.days_after_initiation == 1
    finally:
        assert server.stop() == 0
        s3.stop()
