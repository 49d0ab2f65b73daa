"""WatchProgress through a real channel."""

from __future__ import annotations

import threading
import uuid

import grpc

from derivatives.v1 import derivatives_pb2 as pb
from tests import images
from tests.harness import ServerProcess
from tests.helpers import Stub, expect_error, field_violations, grpcurl_stream, wait_job


def _job(stub: Stub, n: int = 3) -> pb.Job:
    ids = [f"p-{uuid.uuid4().hex[:10]}" for _ in range(n)]
    for asset_id in ids:
        stub.PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=images.jpeg(1600, 1200), skip_derivatives=True))
    job: pb.Job = stub.CreateDerivatives(pb.CreateDerivativesRequest(asset_ids=ids))
    return job


def _assert_ordered_without_gaps(events: list[pb.ProgressEvent]) -> None:
    changes = [e for e in events if not e.heartbeat]
    seqs = [e.seq for e in changes]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    dones = [e.done for e in changes]
    assert dones == sorted(dones)


def test_snapshot_then_every_change_then_the_result(stub: Stub) -> None:
    job = _job(stub)
    events = list(stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id), timeout=120))
    assert events[0].snapshot and events[0].total == 3
    assert not any(e.snapshot for e in events[1:])
    _assert_ordered_without_gaps(events)
    final = events[-1]
    assert (final.stage, final.done, final.total) == (pb.STAGE_SUCCEEDED, 3, 3)
    assert final.WhichOneof("result") == "job" and final.job.job_id == job.job_id
    assert all(e.stage != pb.STAGE_SUCCEEDED for e in events[:-1])


def test_a_finished_job_gives_its_final_event_and_ends(stub: Stub) -> None:
    job = wait_job(stub, _job(stub, 1).job_id)
    events = list(stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id), timeout=30))
    assert len(events) == 1
    assert events[0].snapshot and events[0].stage == pb.STAGE_SUCCEEDED and events[0].job.done == 1


def test_reconnect_with_after_seq_resumes_without_gaps(stub: Stub) -> None:
    job = _job(stub, 6)
    first: list[pb.ProgressEvent] = []
    stream = stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id), timeout=120)
    for event in stream:
        first.append(event)
        if (not event.heartbeat and len(first) >= 2) or event.stage == pb.STAGE_SUCCEEDED:
            break
    stream.cancel()
    last_seq = first[-1].seq
    rest = list(stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id, after_seq=last_seq), timeout=120))
    assert rest[0].snapshot and rest[-1].stage == pb.STAGE_SUCCEEDED
    if len(rest) == 1 and rest[0].seq > last_seq + 1:
        return  # it finished meanwhile: a fresh snapshot carrying the result is the documented answer
    # Otherwise the stream resumes at last_seq + 1 (replayed), or at last_seq when nothing was missed.
    assert rest[0].seq in (last_seq, last_seq + 1)
    resumed = [e for e in first if not e.heartbeat] + [e for e in rest if not e.heartbeat and e.seq > last_seq]
    _assert_ordered_without_gaps(resumed)


def test_disconnecting_watcher_does_not_cancel_the_job(stub: Stub) -> None:
    job = _job(stub, 4)
    stream = stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id), timeout=120)
    next(stream)
    stream.cancel()
    assert wait_job(stub, job.job_id).stage == pb.STAGE_SUCCEEDED


def test_bad_watch_requests(stub: Stub) -> None:
    def first(request: pb.WatchProgressRequest) -> pb.ProgressEvent:
        return next(iter(stub.WatchProgress(request, timeout=10)))

    expect_error(grpc.StatusCode.NOT_FOUND, first, pb.WatchProgressRequest(job_id=str(uuid.uuid4())))
    expect_error(grpc.StatusCode.NOT_FOUND, first, pb.WatchProgressRequest(bundle_id=str(uuid.uuid4())))
    assert "target" in field_violations(
        expect_error(grpc.StatusCode.INVALID_ARGUMENT, first, pb.WatchProgressRequest())
    )
    assert "job_id" in field_violations(
        expect_error(grpc.StatusCode.INVALID_ARGUMENT, first, pb.WatchProgressRequest(job_id="nope"))
    )
    job = wait_job(stub, _job(stub, 1).job_id)
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, first, pb.WatchProgressRequest(job_id=job.job_id, after_seq=10_000)
    )
    assert "after_seq" in field_violations(err)


def test_grpcurl_watches_a_job_to_completion(stub: Stub, server: ServerProcess) -> None:
    job = _job(stub, 2)
    events = grpcurl_stream(server, "WatchProgress", {"job_id": job.job_id})
    assert events[0].get("snapshot") is True
    assert events[-1]["stage"] == "STAGE_SUCCEEDED" and events[-1]["job"]["job_id"] == job.job_id


def test_concurrent_watchers_all_get_the_final_event(stub: Stub, server: ServerProcess) -> None:
    job = _job(stub, 3)
    finals: list[pb.ProgressEvent] = []
    errors: list[BaseException] = []

    def watcher() -> None:
        try:
            with server.channel() as channel:
                events = list(
                    server.stub(channel).WatchProgress(pb.WatchProgressRequest(job_id=job.job_id), timeout=120)
                )
                finals.append(events[-1])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=watcher) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors[:3]
    assert len(finals) == 30 and all(f.stage == pb.STAGE_SUCCEEDED for f in finals)
