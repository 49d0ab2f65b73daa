"""Progress fan-out: one LISTEN connection per process, many watchers.

NOTIFY only wakes the hub; it reads new events from `progress_events` once per job
(not once per watcher) and hands them to every watcher of that job. A periodic
re-read covers a missed notification or a reconnect. Each watcher has a bounded
buffer: a watcher that falls behind loses its backlog and is told to resync from a
fresh snapshot, so a slow client costs memory for the latest state only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import psycopg

from core.database import Database
from core.errors import InvalidArgument
from core.queue import PROGRESS_CHANNEL, JobQueue
from core.records import Job, ProgressEvent
from core.singleflight import SingleFlight

log = logging.getLogger("derivatives.progress")

BUFFER = 256
READ_LIMIT = 1000


class Subscription:
    """One watcher's view of one job: events past `last_seq`, or a request to resync."""

    def __init__(self, job_id: uuid.UUID, last_seq: int) -> None:
        self.job_id = job_id
        self.last_seq = last_seq  # highest seq handed to this watcher
        self.events: deque[ProgressEvent] = deque()
        self.resync = False
        self.wake = asyncio.Event()

    def push(self, events: list[ProgressEvent]) -> None:
        fresh = [e for e in events if e.seq > self.last_seq]
        if not fresh:
            return
        self.last_seq = fresh[-1].seq
        if len(self.events) + len(fresh) > BUFFER:
            self.events.clear()  # fallen behind: drop the backlog, send the latest state instead
            self.resync = True
        else:
            self.events.extend(fresh)
        self.wake.set()

    def take(self) -> tuple[list[ProgressEvent], bool]:
        events, resync = list(self.events), self.resync
        self.events.clear()
        self.resync = False
        self.wake.clear()
        return events, resync


class ProgressHub:
    """A process's fan-out of job progress to its watchers (see the module docstring)."""

    def __init__(self, db: Database, queue: JobQueue, heartbeat_seconds: float, reread_seconds: float = 2.0) -> None:
        self.db = db
        self.queue = queue
        self.heartbeat_seconds = heartbeat_seconds
        self._reads: SingleFlight[Job] = SingleFlight()
        self.reread_seconds = reread_seconds
        self._subs: dict[uuid.UUID, set[Subscription]] = {}
        self._dirty: set[uuid.UUID] = set()
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="progress-listen"),
            asyncio.create_task(self._deliver_loop(), name="progress-deliver"),
            asyncio.create_task(self._reread_loop(), name="progress-reread"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def job(self, job_id: uuid.UUID, at_least_seq: int = 0) -> Job:
        """The job, read once for all watchers that need it at least this fresh."""
        return await self._reads.do((job_id, at_least_seq), lambda: self.queue.get(job_id))

    def _subscribe(self, job_id: uuid.UUID, last_seq: int) -> Subscription:
        sub = Subscription(job_id, last_seq)
        self._subs.setdefault(job_id, set()).add(sub)
        self._mark(job_id)  # deliver anything written between the caller's read and now
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.job_id]

    def _mark(self, job_id: uuid.UUID) -> None:
        if job_id in self._subs:
            self._dirty.add(job_id)
            self._kick.set()

    async def _listen(self) -> None:
        # Outside the pool: a LISTEN connection is held for the life of the process.
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.db.url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {PROGRESS_CHANNEL}")
                    for job_id in list(self._subs):  # catch up on anything missed while disconnected
                        self._mark(job_id)
                    async for note in conn.notifies():
                        with contextlib.suppress(ValueError):
                            self._mark(uuid.UUID(note.payload))
            except (psycopg.Error, OSError) as exc:
                log.warning("progress listener reconnecting: %s", exc)
                await asyncio.sleep(1)

    async def _reread_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reread_seconds)
            for job_id in list(self._subs):
                self._mark(job_id)

    async def _deliver_loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            dirty, self._dirty = self._dirty, set()
            for job_id in dirty:
                try:
                    await self._deliver(job_id)
                except Exception as exc:  # the database is away: the re-read loop retries
                    log.warning("progress read for %s failed: %s", job_id, exc)

    async def _deliver(self, job_id: uuid.UUID) -> None:
        subs = self._subs.get(job_id)
        if not subs:
            return
        after = min(s.last_seq for s in subs)
        while True:
            events = await self._events_after(job_id, after, READ_LIMIT)
            for sub in list(self._subs.get(job_id, ())):
                sub.push(events)
            if len(events) < READ_LIMIT:
                return
            after = events[-1].seq

    async def _events_after(self, job_id: uuid.UUID, after_seq: int, limit: int) -> list[ProgressEvent]:
        rows = await self.db.fetchall("events_after", job_id=job_id, after_seq=after_seq, limit=limit)
        return [ProgressEvent.from_row(r) for r in rows]

    async def _replay(self, job_id: uuid.UUID, after_seq: int, upto_seq: int) -> list[ProgressEvent] | None:
        """Events (after_seq, upto_seq], or None when some were pruned (the caller sends a snapshot)."""
        want = upto_seq - after_seq
        if want <= 0 or want > BUFFER:
            return None
        events = [e for e in await self._events_after(job_id, after_seq, want) if e.seq <= upto_seq]
        return events if len(events) == want else None

    async def watch(self, job_id: uuid.UUID, after_seq: int = 0) -> AsyncIterator[Update]:
        """A job's progress: first its state (or the events missed since `after_seq`), then each
        change, heartbeats while quiet, and a final update carrying the whole job."""
        # A shared read may predate our request: harmless, events after its seq come from the table.
        job = await self.job(job_id)
        if after_seq > job.seq:
            raise InvalidArgument.one("after_seq", f"is past the target's current seq {job.seq}")
        sub = self._subscribe(job_id, job.seq)
        try:
            missed = await self._replay(job_id, after_seq, job.seq) if 0 < after_seq < job.seq else None
            if job.stage.terminal:
                yield Update(ProgressEvent.of_job(job), snapshot=True, job=job)
                return
            if missed:
                for i, event in enumerate(missed):
                    yield Update(event, snapshot=i == 0 or _restarted(missed[i - 1], event))
            else:
                yield Update(ProgressEvent.of_job(job), snapshot=True)
            last = ProgressEvent.of_job(job)
            while True:
                try:
                    await asyncio.wait_for(sub.wake.wait(), self.heartbeat_seconds)
                except TimeoutError:
                    yield Update(last, heartbeat=True)
                    continue
                events, resync = sub.take()
                if resync:
                    job = await self.job(job_id, sub.last_seq)
                    sub.last_seq = max(sub.last_seq, job.seq)
                    last = ProgressEvent.of_job(job)
                    yield Update(last, snapshot=True, job=job if job.stage.terminal else None)
                    if job.stage.terminal:
                        return
                    continue
                for event in events:
                    if event.stage.terminal:
                        # Keyed by this event's seq: the shared read starts after the final write committed.
                        job = await self.job(job_id, event.seq)
                        yield Update(ProgressEvent.of_job(job), job=job)
                        return
                    yield Update(event, snapshot=_restarted(last, event))
                    last = event
        finally:
            self._unsubscribe(sub)


def _restarted(before: ProgressEvent, event: ProgressEvent) -> bool:
    """A new attempt after a started one (a takeover, a retry) starts over from done 0: a snapshot,
    not the next step. The first start (attempt 0 -> 1) is the next step."""
    return event.attempt != before.attempt and before.attempt > 0


@dataclass(frozen=True)
class Update:
    """One event for a watcher: a job's state, and on the final one the whole job."""

    event: ProgressEvent
    snapshot: bool = False
    heartbeat: bool = False
    # Set on the final update only (the job reached a terminal stage).
    job: Job | None = None

    @property
    def final(self) -> bool:
        return self.job is not None
