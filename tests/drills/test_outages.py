"""Failure drills: dependencies going away and coming back, and graceful shutdown.

S3 is SeaweedFS (`weed mini`): stopping an `S3Endpoint` is an outage, starting it again brings back the same
server (same data, same ports), and `wipe()` in between makes it a new, empty one.
"""

from __future__ import annotations

import io
import signal
import threading
import time
import uuid
import zipfile
from pathlib import Path
from typing import NamedTuple

import grpc
import psycopg
import pytest

from core.storage import S3Storage
from derivatives.v1 import derivatives_pb2 as pb
from derivatives.v1 import derivatives_pb2_grpc
from tests import images
from tests.harness import Postgres, S3Endpoint, ServerProcess, server_env
from tests.helpers import ZIP, expect_error, make_work, read_bundle, wait_bundle

pytestmark = pytest.mark.drill


def test_storage_outage_reports_not_serving_and_unavailable(tmp_path: Path, postgres: Postgres) -> None:
    s3 = S3Endpoint(tmp_path / "s3.log")
    server = ServerProcess(
        server_env("s3", postgres.new_database("s3out"), tmp_path / "data", s3), tmp_path / "server.log"
    )
    try:
        server.start()
        with server.channel() as channel:
            stub = derivatives_pb2_grpc.DerivativeServiceStub(channel)
            stub.PutAsset(pb.PutAssetRequest(asset_id="before", data=images.jpeg(20, 20), skip_derivatives=True))
            s3.stop()
            server.wait_health("NOT_SERVING", timeout=30)
            err = expect_error(
                grpc.StatusCode.UNAVAILABLE,
                stub.PutAsset,
                pb.PutAssetRequest(asset_id="during", data=images.jpeg(20, 20), skip_derivatives=True),
            )
            assert "storage" in err.details()
            expect_error(grpc.StatusCode.NOT_FOUND, stub.GetAsset, pb.GetAssetRequest(asset_id="during"))
            s3.wipe()
            s3.start()  # same port, but a new, empty server: the service must make its buckets again
            server.wait_health("SERVING", timeout=30)
            stub.PutAsset(pb.PutAssetRequest(asset_id="after", data=images.jpeg(20, 20), skip_derivatives=True))
    finally:
        assert server.stop() == 0
        s3.stop()


class BuildState(NamedTuple):
    status: str  # the bundle's
    stage: str  # the rest: its job's
    attempts: int
    error: str | None
    done: int
    total: int


def _build_state(database: str, bundle_id: str) -> BuildState:
    with psycopg.connect(database) as conn:
        row = conn.execute(
            "SELECT b.status, j.stage, j.attempts, j.error, j.done, j.total"
            " FROM bundles b JOIN jobs j ON j.job_id = b.job_id WHERE b.bundle_id = %s",
            (bundle_id,),
        ).fetchone()
    assert row is not None
    return BuildState(*row)


def test_s3_outage_mid_build_marks_nothing_built_and_the_build_finishes_after(
    tmp_path: Path, postgres: Postgres
) -> None:
    """S3 stops while a ZIP streams into a multipart upload: calls answer UNAVAILABLE, the bundle is not marked
    SUCCESS (with a partial object or any other), and once the same server is back the build finishes, whole."""
    s3 = S3Endpoint(tmp_path / "s3.log")
    database = postgres.new_database("s3mid")
    server = ServerProcess(
        server_env("s3", database, tmp_path / "data", s3, DERIVATIVES_WORKERS="1"), tmp_path / "server.log"
    )
    try:
        server.start()
        storage = server.storage()
        assert isinstance(storage, S3Storage)
        bucket = server.settings.bucket_bundles
        with server.channel() as channel:
            stub = derivatives_pb2_grpc.DerivativeServiceStub(channel)
            small, _ = make_work(stub, [images.jpeg(300, 200)])
            built = wait_bundle(stub, small, ZIP)  # stored before the outage: reading it needs S3
            assert built.status == pb.BUNDLE_STATUS_SUCCESS, built.error
            # Nine ~2 MB JPEG originals go into the ZIP as they are: past the first 16 MiB part, so the upload is
            # multipart. Eighty small PNGs follow, each needing its full-size JPEG made on the one pool process
            # and stored: seconds of build are left when the first part goes up.
            page = images.jpeg(4000, 3000)
            work_id, ids = make_work(stub, [page] * 9 + [images.png_zeros(3000, 2000, color_type=2)] * 80)
            bundle = stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=work_id, kind=ZIP))
            with psycopg.connect(database, autocommit=True) as conn:  # however slow this machine, the outage
                conn.execute(  # must not use up the job's attempts (the default is 5)
                    "UPDATE jobs SET max_attempts = 100 FROM bundles b WHERE jobs.job_id = b.job_id"
                    " AND b.bundle_id = %s",
                    (bundle.bundle_id,),
                )
            deadline = time.monotonic() + 180
            while not storage.client._list_multipart_uploads(bucket, prefix=f"{work_id}/").uploads:
                assert time.monotonic() < deadline, (
                    f"no multipart upload began: {_build_state(database, bundle.bundle_id)}"
                )
                time.sleep(0.05)
            # Killed: the outage begins at once (a graceful stop would first let the parts in flight finish).
            s3.stop(signal.SIGKILL)
            state = _build_state(database, bundle.bundle_id)
            assert state.status == "in_progress" and state.stage in ("running", "queued"), (
                f"S3 did not stop mid-build, so this proves nothing: {state}"
            )

            server.wait_health("NOT_SERVING", timeout=60)
            err = expect_error(
                grpc.StatusCode.UNAVAILABLE,
                stub.PutAsset,
                pb.PutAssetRequest(asset_id="during", data=images.jpeg(20, 20), skip_derivatives=True),
                timeout=60,
            )
            assert "storage" in err.details()
            expect_error(
                grpc.StatusCode.UNAVAILABLE,
                lambda: list(stub.ReadBundle(pb.ReadBundleRequest(bundle_id=built.bundle_id), timeout=60)),
            )
            deadline = time.monotonic() + 120  # the build's attempt fails; it will be retried
            while (state := _build_state(database, bundle.bundle_id)).error is None:
                assert time.monotonic() < deadline, f"the build never noticed the outage: {state}"
                time.sleep(0.1)
            assert state.status == "in_progress" and state.stage != "failed", state
            again = stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=work_id, kind=ZIP), timeout=60)
            assert (again.bundle_id, again.status, again.url) == (bundle.bundle_id, pb.BUNDLE_STATUS_IN_PROGRESS, "")

            s3.start()  # the same server: same data directory, same ports
            server.wait_health("SERVING", timeout=60)
            events = list(stub.WatchProgress(pb.WatchProgressRequest(bundle_id=bundle.bundle_id), timeout=600))
            final = events[-1]
            assert final.stage == pb.STAGE_SUCCEEDED, final
            assert final.bundle.status == pb.BUNDLE_STATUS_SUCCESS, final.bundle.error
            assert _build_state(database, bundle.bundle_id).attempts >= 2  # finished by an attempt after the outage
            data = read_bundle(stub, final.bundle)
            (stored,) = storage.list(bucket, f"{work_id}/")
            assert len(data) == final.bundle.size_bytes == stored.size
            archive = zipfile.ZipFile(io.BytesIO(data))
            assert archive.testzip() is None  # every member whole, its CRC right
            names = archive.namelist()
            assert len(names) == len(ids) + 1 and names[-1] == "about.txt"
            assert all(name.endswith(f"_{asset_id}.jpg") for name, asset_id in zip(names, ids, strict=False))
            assert archive.read(names[0]) == page
            assert len(read_bundle(stub, built)) == built.size_bytes  # what was stored before is still there
    finally:
        assert server.stop() == 0
        s3.stop()


def test_database_outage_reports_not_serving_and_unavailable(tmp_path: Path) -> None:
    pg = Postgres(tmp_path / "pg")
    server = ServerProcess(
        server_env("file", pg.new_database("pgout"), tmp_path / "data", None), tmp_path / "server.log"
    )
    try:
        server.start()
        with server.channel() as channel:
            stub = derivatives_pb2_grpc.DerivativeServiceStub(channel)
            stub.PutAsset(pb.PutAssetRequest(asset_id="kept", data=images.jpeg(20, 20), skip_derivatives=True))
            pg.stop()
            server.wait_health("NOT_SERVING", timeout=30)
            expect_error(grpc.StatusCode.UNAVAILABLE, stub.GetAsset, pb.GetAssetRequest(asset_id="kept"), timeout=30)
            pg = Postgres(tmp_path / "pg")  # the same data directory: the row is still there
            server.wait_health("SERVING", timeout=30)
            assert stub.GetAsset(pb.GetAssetRequest(asset_id="kept"), timeout=30).width == 20
    finally:
        assert server.stop() == 0
        pg.stop()


def test_sigterm_drains_in_flight_calls(tmp_path: Path, postgres: Postgres) -> None:
    server = ServerProcess(
        server_env("file", postgres.new_database("drain"), tmp_path / "data", None), tmp_path / "server.log"
    )
    server.start()
    data = images.jpeg(400, 300)
    sent_first = threading.Event()

    def slow_upload():  # type: ignore[no-untyped-def]
        yield pb.UploadOriginalRequest(header=pb.UploadOriginalHeader(asset_id="slow", skip_derivatives=True))
        for i in range(0, len(data), 4096):
            yield pb.UploadOriginalRequest(chunk=data[i : i + 4096])
            sent_first.set()
            time.sleep(0.02)

    result: dict[str, object] = {}
    with server.channel() as channel:
        stub = derivatives_pb2_grpc.DerivativeServiceStub(channel)

        def run() -> None:
            try:
                result["asset"] = stub.UploadOriginal(slow_upload(), timeout=60)
            except grpc.RpcError as exc:
                result["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        assert sent_first.wait(10)
        time.sleep(0.1)
        assert server.proc is not None
        server.proc.terminate()
        time.sleep(0.3)
        with grpc.insecure_channel(server.address) as fresh:  # new calls are turned away meanwhile
            new_stub = derivatives_pb2_grpc.DerivativeServiceStub(fresh)
            expect_error(
                grpc.StatusCode.UNAVAILABLE, new_stub.GetAsset, pb.GetAssetRequest(asset_id=uuid.uuid4().hex), timeout=5
            )
        thread.join(60)
    assert "error" not in result, result.get("error")
    assert result["asset"].size_bytes == len(data)  # type: ignore[attr-defined]
    assert server.stop() == 0


def test_repeated_sigterm_during_shutdown_still_exits_cleanly(tmp_path: Path, postgres: Postgres) -> None:
    """A supervisor that repeats SIGTERM while the server stops gets exit status 0, not -15."""
    import signal

    env = server_env("file", postgres.new_database("sigterm"), tmp_path / "data", None)
    server = ServerProcess(env, tmp_path / "server.log").start()
    assert server.proc is not None
    deadline = time.monotonic() + 60
    while server.proc.poll() is None:  # until it has exited: every stage of the shutdown gets one
        assert time.monotonic() < deadline, "the server never exited"
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.005)
    assert server.proc.returncode == 0, server.tail()
