"""A job whose renders fail (storage refuses the uploads) gives back every render slot: the jobs after it run.

The renderer's slots (2 per pool process) are shared by every job of the process. A render task cancelled before
its first step, when a sibling's failure aborts the job's task group, must still give its slot back; if it did
not, a few failed attempts would leave none, and every later job would wait for a slot forever.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from derivatives.v1 import derivatives_pb2 as pb
from tests import images
from tests.harness import Postgres, ServerProcess, server_env
from tests.helpers import wait_job

pytestmark = pytest.mark.drill


def test_failed_renders_give_their_slots_back(tmp_path: Path, postgres: Postgres) -> None:
    env = server_env("file", postgres.new_database("slots"), tmp_path / "data", None, DERIVATIVES_WORKERS="1")
    server = ServerProcess(env, tmp_path / "server.log").start()
    derivatives = tmp_path / "data" / "storage" / "derivatives"
    try:
        with server.channel() as channel:
            stub = server.stub(channel)
            ids = [f"s-{i}" for i in range(24)]
            for i, asset_id in enumerate(ids):
                stub.PutAsset(
                    pb.PutAssetRequest(asset_id=asset_id, data=images.jpeg(400 + i, 300), skip_derivatives=True)
                )
            # Storage refuses every derivative upload: the bucket's directory is a file.
            shutil.rmtree(derivatives)
            derivatives.write_bytes(b"")
            failing = [
                stub.CreateDerivatives(pb.CreateDerivativesRequest(asset_ids=ids[i : i + 6], only=["thumb_mini"]))
                for i in range(0, 24, 6)
            ]
            deadline = time.monotonic() + 120
            log = server.log_path
            while log.read_text().count("; retry in") < len(failing):  # each job's first attempt failed
                assert time.monotonic() < deadline, server.tail()
                time.sleep(0.1)
            derivatives.unlink()  # storage is back
            derivatives.mkdir()
            job = stub.CreateDerivatives(pb.CreateDerivativesRequest(asset_ids=ids[:4], only=["thumb_standard"]))
            assert wait_job(stub, job.job_id, timeout=120).stage == pb.STAGE_SUCCEEDED
            for job in failing:  # retried once storage is back
                assert wait_job(stub, job.job_id, timeout=180).stage == pb.STAGE_SUCCEEDED
    finally:
        assert server.stop() == 0, server.tail()
