"""Waiting for jobs through the API."""

from __future__ import annotations

import time

from client.client import TERMINAL
from derivatives.v1 import derivatives_pb2 as pb


def wait_job(stub, job_id: str, timeout: float = 120.0) -> pb.Job:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id))
        if job.stage in TERMINAL:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {pb.Stage.Name(job.stage)} at {job.done}/{job.total}")
        time.sleep(0.05)


def wait_derivatives_created(stub, asset_id: str, timeout: float = 120.0) -> pb.Asset:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        asset = stub.GetAsset(pb.GetAssetRequest(asset_id=asset_id))
        if asset.derivatives_created:
            return asset
        if time.monotonic() > deadline:
            raise TimeoutError(f"{asset_id}: derivatives never created; have {[d.key for d in asset.derivatives]}")
        time.sleep(0.05)
