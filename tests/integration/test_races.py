"""The concurrency contract under racing clients: afterwards the database and the
bucket listing must agree exactly, with no stale derivative anywhere."""

from __future__ import annotations

import random
import threading
import uuid

import grpc

from derivatives.v1 import derivatives_pb2 as pb
from tests import images
from tests.harness import ServerProcess
from tests.helpers import Stub, wait_job

ROUNDS = 6


def test_racing_creates_updates_and_new_originals(stub: Stub, server: ServerProcess) -> None:
    originals = [images.jpeg(900, 600), images.jpeg(800, 700), images.png(700, 500)]
    custom = images.png(30, 20)
    assets = [f"race-{uuid.uuid4().hex[:8]}" for _ in range(4)]
    for asset_id in assets:
        stub.PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=originals[0], skip_derivatives=True))
    job_ids: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with server.channel() as channel:
                s = server.stub(channel)
                for _ in range(ROUNDS):
                    asset_id = rng.choice(assets)
                    action = rng.choice(["create", "create", "update", "put"])
                    if action == "create":
                        job = s.CreateDerivatives(
                            pb.CreateDerivativesRequest(asset_ids=[asset_id], lazy=rng.random() < 0.3)
                        )
                        with lock:
                            job_ids.append(job.job_id)
                    elif action == "put":
                        s.PutAsset(
                            pb.PutAssetRequest(asset_id=asset_id, data=rng.choice(originals), skip_derivatives=True)
                        )
                    else:
                        header = pb.UpdateDerivativeHeader(asset_id=asset_id, key=rng.choice(["thumb_mini", "custom"]))
                        try:
                            s.UpdateDerivative(
                                iter(
                                    [
                                        pb.UpdateDerivativeRequest(header=header),
                                        pb.UpdateDerivativeRequest(chunk=custom),
                                    ]
                                )
                            )
                        except grpc.RpcError as exc:  # the original changed between read and attach: refused, fine
                            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    for job_id in job_ids:
        job = wait_job(stub, job_id, timeout=300)
        assert (job.stage, job.done) == (pb.STAGE_SUCCEEDED, job.total)

    storage = server.storage()
    settings = server.settings
    for asset_id in assets:
        asset = stub.GetAsset(pb.GetAssetRequest(asset_id=asset_id))
        keys = [d.key for d in asset.derivatives]
        assert len(keys) == len(set(keys)), "duplicate derivative keys"
        assert all(d.original_sha512 == asset.sha512 for d in asset.derivatives), "stale derivative"
        listed = {o.key for o in storage.list(settings.bucket_derivatives, f"{asset_id}/")}
        assert listed == {d.location.key for d in asset.derivatives}, "orphaned or missing derivative bytes"
        originals_listed = {o.key for o in storage.list(settings.bucket_originals, f"{asset_id}/")}
        assert originals_listed == {asset.original.key}, "orphaned original"
