"""Subscribing reads nothing when this process already knows the job (core/progress.py): a new watcher of a job
with a feed gets the feed's state (and its missed events from the feed), a watcher of a job that ended gets the
final state read for an earlier one. Shown by taking the hub's database away once the first watcher is in: the
next watchers still get their first messages. Real Postgres, queue and hub, in this process."""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import cast

import grpc

from core.database import Database
from core.progress import ProgressHub, Update
from core.queue import PostgresQueue
from core.records import DerivativesPayload, Job, JobKind, Stage
from derivatives.v1 import derivatives_pb2 as pb
from derivatives.v1 import derivatives_pb2_grpc as pb_grpc
from tests import images
from tests.harness import Postgres, ServerProcess
from tests.helpers import Stub, wait_job

WORKER = "test-worker"
HANG = 30.0  # seconds: only catches a hang
AT_ONCE, CHANNELS = 1500, 8
LOCAL = [("grpc.use_local_subchannel_pool", 1)]  # each channel its own connection


async def next_update(watcher: AsyncIterator[Update]) -> Update:
    return await asyncio.wait_for(anext(watcher), HANG)


async def running_job(queue: PostgresQueue) -> Job:
    await queue.enqueue(JobKind.CREATE_DERIVATIVES, DerivativesPayload(("a",)), 3, "tests")
    job = await queue.claim(WORKER, [JobKind.CREATE_DERIVATIVES])
    assert job is not None
    return job


async def step(queue: PostgresQueue, job: Job, done: int) -> None:
    assert await queue.progress(job.job_id, WORKER, done=done, total=3, stage=Stage.RUNNING, new_failures=[])


def test_a_watcher_of_a_followed_job_subscribes_from_the_feed(postgres: Postgres) -> None:
    url = postgres.new_database("subscribe_feed")

    async def scenario() -> None:
        writer, hub_db = Database(url, max_size=2), Database(url, max_size=2)
        await writer.open()
        await writer.migrate()
        await hub_db.open()
        queue = PostgresQueue(writer)
        hub = ProgressHub(hub_db, PostgresQueue(hub_db), heartbeat_seconds=3600)
        hub.start()
        try:
            job = await running_job(queue)
            first = hub.watch(job.job_id)
            snapshot = await next_update(first)
            assert snapshot.snapshot and snapshot.event.seq == job.seq
            for done in (1, 2):
                await step(queue, job, done)
                assert (await next_update(first)).event.done == done
            head = job.seq + 2

            await hub_db.close()  # the hub can read nothing more
            second = hub.watch(job.job_id)
            got = await next_update(second)
            assert got.snapshot and (got.event.seq, got.event.done) == (head, 2)
            resumed = hub.watch(job.job_id, after_seq=head - 2)  # the events missed since, from the feed
            missed = [await next_update(resumed), await next_update(resumed)]
            assert [(u.event.seq, u.snapshot) for u in missed] == [(head - 1, True), (head, False)]
            for watcher in (first, second, resumed):  # hub.watch is an async generator: leave as a client does
                await cast(AsyncGenerator[Update, None], watcher).aclose()
        finally:
            await hub.stop()
            await writer.close()

    asyncio.run(scenario())


def test_a_watcher_of_a_finished_job_gets_the_final_state_read_for_an_earlier_one(postgres: Postgres) -> None:
    url = postgres.new_database("subscribe_final")

    async def scenario() -> None:
        writer, hub_db = Database(url, max_size=2), Database(url, max_size=2)
        await writer.open()
        await writer.migrate()
        await hub_db.open()
        queue = PostgresQueue(writer)
        hub = ProgressHub(hub_db, PostgresQueue(hub_db), heartbeat_seconds=3600)
        hub.start()
        try:
            job = await running_job(queue)
            assert await queue.finish(job.job_id, WORKER, done=3, new_failures=[])
            finals = []
            finals.append([u async for u in hub.watch(job.job_id)])
            await hub_db.close()  # after the first watcher: the second reads nothing
            finals.append([u async for u in hub.watch(job.job_id)])
            for updates in finals:
                assert len(updates) == 1
                final = updates[0]
                assert final.final and final.snapshot and final.event.stage is Stage.SUCCEEDED
                assert final.job is not None and final.job.done == 3
        finally:
            await hub.stop()
            await writer.close()

    asyncio.run(scenario())


def test_thousands_of_streams_opened_at_once_are_all_served(stub: Stub, server: ServerProcess) -> None:
    """More calls at once than grpc core's default queue of calls not yet taken up (1,000; past it, it refuses
    them at random): server/grpc_role.py raises it, so none is cancelled."""
    asset_id = f"p-{uuid.uuid4().hex[:10]}"
    stub.PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=images.jpeg(320, 240), skip_derivatives=True))
    job = stub.CreateDerivatives(pb.CreateDerivativesRequest(asset_ids=[asset_id], only=["thumb_mini"]))
    wait_job(stub, job.job_id)

    async def watch_all() -> list[str]:
        channels = [grpc.aio.insecure_channel(server.address, options=LOCAL) for _ in range(CHANNELS)]
        try:
            stubs = [pb_grpc.DerivativeServiceStub(c) for c in channels]
            request = pb.WatchProgressRequest(job_id=job.job_id)

            async def one(i: int) -> str:
                try:
                    events = [e async for e in stubs[i % CHANNELS].WatchProgress(request, timeout=HANG * 4)]
                except grpc.aio.AioRpcError as exc:
                    return str(exc.code())
                return pb.Stage.Name(events[-1].stage) if events else "no events"

            return await asyncio.gather(*(one(i) for i in range(AT_ONCE)))
        finally:
            await asyncio.gather(*(c.close() for c in channels))

    ends = asyncio.run(watch_all())
    assert collections.Counter(ends) == {"STAGE_SUCCEEDED": AT_ONCE}
