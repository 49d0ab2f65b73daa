"""Progress across processes: the watcher's server is not the one running the job."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import grpc

from derivatives.v1 import derivatives_pb2 as pb
from tests import images
from tests.harness import Postgres, ServerProcess, server_env
from tests.helpers import expect_error


def test_watcher_on_a_poolless_server_sees_heartbeats_then_a_job_run_elsewhere(
    tmp_path: Path, postgres: Postgres
) -> None:
    env = server_env("file", postgres.new_database("replicas"), tmp_path / "data", None)
    a = ServerProcess({**env, "DERIVATIVES_WORKERS": "0"}, tmp_path / "a.log").start()
    b: ServerProcess | None = None
    try:
        with a.channel() as channel:
            stub = a.stub(channel)
            ids = [f"r{i}" for i in range(3)]
            for asset_id in ids:
                stub.PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=images.jpeg(800, 600), skip_derivatives=True))
            job = stub.CreateDerivatives(pb.CreateDerivativesRequest(asset_ids=ids))

            # A client deadline ends only its own stream.
            expect_error(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                lambda: list(stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id), timeout=1)),
            )

            events: list[pb.ProgressEvent] = []
            seen_heartbeats = threading.Event()

            def watch() -> None:
                for event in stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id), timeout=120):
                    events.append(event)
                    if sum(e.heartbeat for e in events) >= 2:
                        seen_heartbeats.set()

            thread = threading.Thread(target=watch)
            thread.start()
            assert seen_heartbeats.wait(30), "no heartbeats on a quiet job"
            quiet = [e for e in events if e.heartbeat]
            assert all(e.seq == events[0].seq and e.stage == pb.STAGE_QUEUED for e in quiet)

            b = ServerProcess({**env, "DERIVATIVES_WORKERS": "1"}, tmp_path / "b.log").start()  # the job runs here
            thread.join(120)
            assert events[-1].stage == pb.STAGE_SUCCEEDED and events[-1].job.done == 3
            changes = [e.seq for e in events if not e.heartbeat]
            assert changes == list(range(changes[0], changes[0] + len(changes)))
            assert uuid.UUID(events[-1].job.job_id)
    finally:
        assert a.stop() == 0
        if b is not None:
            assert b.stop() == 0
