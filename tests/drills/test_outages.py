"""Failure drills: dependencies going away and coming back, and graceful shutdown."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

from derivatives.v1 import derivatives_pb2 as pb
from derivatives.v1 import derivatives_pb2_grpc
from tests import images
from tests.harness import Postgres, S3Endpoint, ServerProcess, server_env
from tests.helpers import expect_error

pytestmark = pytest.mark.drill


def test_storage_outage_reports_not_serving_and_unavailable(tmp_path: Path, postgres: Postgres) -> None:
    s3 = S3Endpoint(tmp_path / "moto.log")
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
            s3.start()  # same port; moto starts empty, so the server must make its buckets again
            server.wait_health("SERVING", timeout=30)
            stub.PutAsset(pb.PutAssetRequest(asset_id="after", data=images.jpeg(20, 20), skip_derivatives=True))
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
