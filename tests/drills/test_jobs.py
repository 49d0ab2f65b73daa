"""Jobs outlive the processes that run them: kill, restart, and hosts without a pool."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from derivatives.v1 import derivatives_pb2 as pb
from derivatives.v1 import derivatives_pb2_grpc
from tests import images
from tests.harness import ROOT, Postgres, ServerProcess, server_env
from tests.helpers import wait_job

ASSETS = 24  # with one worker process: seconds of work, so a kill lands mid-job


def _setup(server: ServerProcess) -> tuple[list[str], str]:
    with server.channel() as channel:
        stub = derivatives_pb2_grpc.DerivativeServiceStub(channel)
        ids = [f"j{i}" for i in range(ASSETS)]
        data = images.jpeg(2400, 1600)
        for asset_id in ids:
            stub.PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=data, skip_derivatives=True))
        job = stub.CreateDerivatives(pb.CreateDerivativesRequest(asset_ids=ids))
        return ids, job.job_id


def _wait_started(server: ServerProcess, job_id: str) -> None:
    with server.channel() as channel:
        stub = derivatives_pb2_grpc.DerivativeServiceStub(channel)
        deadline = time.monotonic() + 60
        while stub.GetJob(pb.GetJobRequest(job_id=job_id)).done < 1:
            assert time.monotonic() < deadline, "job never started"
            time.sleep(0.02)


def _assert_unfinished(env: dict[str, str], job_id: str) -> None:
    """The first process must have stopped mid-job, or the drill proves nothing."""
    import psycopg

    with psycopg.connect(env["DATABASE_URL"]) as conn:
        row = conn.execute("SELECT stage, done, total FROM jobs WHERE job_id = %s", (job_id,)).fetchone()
    assert row is not None and row[0] != "succeeded" and row[1] < row[2], f"job not stopped mid-way: {row}"


def _check_finished(server: ServerProcess, ids: list[str], job_id: str) -> pb.Job:
    with server.channel() as channel:
        stub = derivatives_pb2_grpc.DerivativeServiceStub(channel)
        job = wait_job(stub, job_id, timeout=180)
        assert (job.stage, job.done, job.total, list(job.failures)) == (pb.STAGE_SUCCEEDED, ASSETS, ASSETS, [])
        for asset_id in ids:
            assert stub.GetAsset(pb.GetAssetRequest(asset_id=asset_id)).derivatives_created
        return job


def test_killed_server_job_is_taken_over_after_the_lease(tmp_path: Path, postgres: Postgres) -> None:
    env = server_env(
        "file",
        postgres.new_database("kill"),
        tmp_path / "data",
        None,
        DERIVATIVES_WORKERS="1",
        DERIVATIVES_JOB_LEASE_SECONDS="2",
    )
    first = ServerProcess(env, tmp_path / "first.log").start()
    # A viewer on a server without a pool follows the job across the takeover.
    viewer = ServerProcess({**env, "DERIVATIVES_WORKERS": "0"}, tmp_path / "viewer.log").start()
    second: ServerProcess | None = None
    try:
        ids, job_id = _setup(first)
        events: list[pb.ProgressEvent] = []
        with viewer.channel() as channel:
            stream = derivatives_pb2_grpc.DerivativeServiceStub(channel).WatchProgress(
                pb.WatchProgressRequest(job_id=job_id), timeout=240
            )
            watching = threading.Thread(target=lambda: events.extend(e for e in stream if not e.heartbeat))
            watching.start()
            _wait_started(first, job_id)
            first.stop(signal.SIGKILL)  # no chance to re-queue: only the lease can bring the job back
            _assert_unfinished(env, job_id)
            second = ServerProcess(env, tmp_path / "second.log").start()
            job = _check_finished(second, ids, job_id)
            assert job.attempts >= 2
            watching.join(60)
            assert not watching.is_alive(), "the viewer's stream never ended"
        assert events and events[-1].stage == pb.STAGE_SUCCEEDED, events[-3:]
        # The first event of each new attempt is a snapshot carrying its number, starting over from 0.
        starts = [e for e in events if e.attempt >= 2 and e.stage == pb.STAGE_RUNNING]
        assert starts and starts[0].snapshot and starts[0].done == 0, starts[:2]
        before = [e for e in events if e.seq < starts[0].seq]
        assert before and all(e.attempt == 1 for e in before if e.stage == pb.STAGE_RUNNING)
        assert any(e.done > 0 for e in before), "the first attempt made no visible progress: the drill proves nothing"
    finally:
        for server in (viewer, second):
            if server is not None:
                assert server.stop() == 0


def test_sigterm_puts_the_job_back_for_the_next_process(tmp_path: Path, postgres: Postgres) -> None:
    env = server_env(
        "file",
        postgres.new_database("term"),
        tmp_path / "data",
        None,
        DERIVATIVES_WORKERS="1",
        DERIVATIVES_SHUTDOWN_GRACE="0.5",
    )
    first = ServerProcess(env, tmp_path / "first.log").start()
    ids, job_id = _setup(first)
    _wait_started(first, job_id)
    assert first.stop() == 0
    _assert_unfinished(env, job_id)
    assert "re-queued" in first.log_path.read_text()
    second = ServerProcess(env, tmp_path / "second.log").start()
    try:
        _check_finished(second, ids, job_id)
    finally:
        assert second.stop() == 0


def test_a_standalone_worker_host_runs_jobs_for_a_server_without_a_pool(tmp_path: Path, postgres: Postgres) -> None:
    env = server_env("file", postgres.new_database("host"), tmp_path / "data", None, DERIVATIVES_WORKERS="0")
    server = ServerProcess(env, tmp_path / "server.log").start()
    worker_env = {**server.full_env, "DERIVATIVES_WORKERS": "2"}
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "worker"], env=worker_env, cwd=ROOT, stdout=log, stderr=log)
    try:
        ids, job_id = _setup(server)
        _check_finished(server, ids, job_id)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, (tmp_path / "worker.log").read_text()[-2000:]
        assert server.stop() == 0


def test_a_job_whose_runner_died_every_time_fails_for_good(tmp_path: Path, postgres: Postgres) -> None:
    import uuid

    import psycopg
    from psycopg.types.json import Jsonb

    env = server_env(
        "file",
        postgres.new_database("exhaust"),
        tmp_path / "data",
        None,
        DERIVATIVES_WORKERS="1",
        DERIVATIVES_JOB_LEASE_SECONDS="1",
    )
    server = ServerProcess(env, tmp_path / "server.log").start()
    try:
        job_id = uuid.uuid4()
        with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:  # as a crashed runner leaves it
            conn.execute(
                "INSERT INTO jobs (job_id, kind, payload, total, stage, attempts, worker_id, heartbeat_at)"
                " VALUES (%s, 'create_derivatives', %s, 1, 'running', 5, 'dead-host:1', now() - interval '1 hour')",
                (job_id, Jsonb({"asset_ids": ["x"], "only": [], "exclude": [], "lazy": False})),
            )
        with server.channel() as channel:
            job = wait_job(server.stub(channel), str(job_id), timeout=60)
        assert job.stage == pb.STAGE_FAILED and job.attempts == 5
        assert "gave up after 5 attempts" in job.error.message
    finally:
        assert server.stop() == 0
