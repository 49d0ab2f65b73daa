"""The embedded Postgres is supervised: killed, it is started again and the service goes back to SERVING
with no one's help; a server killed with SIGKILL does not keep the next clean stop from stopping it."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import grpc
import pytest

from derivatives.v1 import derivatives_pb2 as pb
from derivatives.v1 import derivatives_pb2_grpc
from tests import images
from tests.harness import ServerProcess

pytestmark = pytest.mark.drill


def _embedded(tmp_path: Path) -> ServerProcess:
    env = {"DERIVATIVES_DATA_DIR": str(tmp_path / "data"), "DERIVATIVES_WORKERS": "0"}  # no DATABASE_URL
    return ServerProcess(env, tmp_path / "server.log")


def _postmaster(tmp_path: Path) -> int:
    return int((tmp_path / "data" / "pg" / "postmaster.pid").read_text().splitlines()[0])


def _gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_a_killed_embedded_postgres_is_started_again(tmp_path: Path) -> None:
    server = _embedded(tmp_path).start()
    try:
        with server.channel() as channel:
            stub = derivatives_pb2_grpc.DerivativeServiceStub(channel)
            stub.PutAsset(pb.PutAssetRequest(asset_id="before", data=images.png(20, 20), skip_derivatives=True))
            first = _postmaster(tmp_path)
            killed_at = time.monotonic()
            os.kill(first, signal.SIGKILL)
            assert _gone(first)
            # Health may or may not see the outage (a probe waits up to the pool's 5 s timeout and the restart
            # is often quicker); what counts: calls succeed again, on a new postmaster, with no one's help.
            deadline = time.monotonic() + 120
            while True:
                try:
                    reply = stub.GetAsset(pb.GetAssetRequest(asset_id="before"), timeout=10)
                    break
                except grpc.RpcError as exc:  # the outage, or a call that waited through it
                    assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), exc
                    assert time.monotonic() < deadline, "never recovered"
                    time.sleep(0.2)
            took = time.monotonic() - killed_at
            assert reply.asset_id == "before"  # the data survived
            assert _postmaster(tmp_path) != first
            server.wait_health("SERVING", timeout=60)
            stub.PutAsset(pb.PutAssetRequest(asset_id="after", data=images.png(20, 20), skip_derivatives=True))
            print(f"SERVING again {took:.1f} s after the postmaster was killed")
        assert "started it again" in server.log_path.read_text()
    finally:
        assert server.stop() == 0, server.tail()
    assert not (tmp_path / "data" / "pg" / "postmaster.pid").exists(), "the clean stop left the postmaster running"


def test_a_clean_stop_after_a_sigkill_still_stops_postgres(tmp_path: Path) -> None:
    killed = _embedded(tmp_path).start()
    killed.stop(signal.SIGKILL)  # its handle stays in pgserver's list
    server = _embedded(tmp_path).start()
    postmaster = _postmaster(tmp_path)
    assert server.stop() == 0, server.tail()
    try:
        assert _gone(postmaster), "the clean stop left the postmaster running"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(postmaster, signal.SIGKILL)  # never leave one behind, even when the test fails
