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
from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg

from core.database import Database, Row
from core.errors import InvalidArgument
from core.jobs import TERMINAL
from core.singleflight import SingleFlight

log = logging.getLogger("derivatives.progress")
_JobGetter = Callable[[uuid.UUID], Awaitable[Row]]

CHANNEL = "derivatives_progress"
BUFFER = 256
READ_LIMIT = 1000


class Subscription:
    """One watcher's view of one job: events past `last_seq`, or a request to resync."""

    def __init__(self, job_id: uuid.UUID, last_seq: int) -> None:
        self.job_id = job_id
        self.last_seq = last_seq  # highest seq handed to this watcher
        self.events: deque[Row] = deque()
        self.resync = False
        self.wake = asyncio.Event()

    def push(self, events: list[Row]) -> None:
        fresh = [e for e in events if e["seq"] > self.last_seq]
        if not fresh:
            return
        self.last_seq = fresh[-1]["seq"]
        if len(self.events) + len(fresh) > BUFFER:
            self.events.clear()  # fallen behind: drop the backlog, send the latest state instead
            self.resync = True
        else:
            self.events.extend(fresh)
        self.wake.set()

    def take(self) -> tuple[list[Row], bool]:
        events, resync = list(self.events), self.resync
        self.events.clear()
        self.resync = False
        self.wake.clear()
        return events, resync


class ProgressHub:
    def __init__(self, db: Database, get_job: _JobGetter, reread_seconds: float = 2.0) -> None:
        self.db = db
        self._get_job = get_job
        self._reads: SingleFlight[Row] = SingleFlight()
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

    async def job(self, job_id: uuid.UUID, at_least_seq: int = 0) -> Row:
        """The job's row, read once for all watchers that need it at least this fresh."""
        return await self._reads.do((job_id, at_least_seq), lambda: self._get_job(job_id))

    def subscribe(self, job_id: uuid.UUID, last_seq: int) -> Subscription:
        sub = Subscription(job_id, last_seq)
        self._subs.setdefault(job_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
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
                    await conn.execute(f"LISTEN {CHANNEL}")
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
            events = await self.db.fetchall("events_after", job_id=job_id, after_seq=after, limit=READ_LIMIT)
            for sub in list(self._subs.get(job_id, ())):
                sub.push(events)
            if len(events) < READ_LIMIT:
                return
            after = events[-1]["seq"]

    async def replay(self, job_id: uuid.UUID, after_seq: int, upto_seq: int) -> list[Row] | None:
        """Events (after_seq, upto_seq], or None when some were pruned (the caller sends a snapshot)."""
        want = upto_seq - after_seq
        if want <= 0 or want > BUFFER:
            return None
        events = await self.db.fetchall("events_after", job_id=job_id, after_seq=after_seq, limit=want)
        events = [e for e in events if e["seq"] <= upto_seq]
        return events if len(events) == want else None


class Update:
    """One event for a watcher: a job's state (a progress event row or a job row)."""

    __slots__ = ("final", "heartbeat", "row", "snapshot")

    def __init__(self, row: Row, *, snapshot: bool = False, heartbeat: bool = False, final: bool = False) -> None:
        self.row = row
        self.snapshot = snapshot
        self.heartbeat = heartbeat
        self.final = final


async def watch(hub: ProgressHub, job_id: uuid.UUID, after_seq: int, heartbeat_seconds: float) -> AsyncIterator[Update]:
    """A job's progress: first its state (or the events missed since `after_seq`), then each
    change, heartbeats while quiet, and a final update carrying the whole job."""
    # A shared read may predate our request: harmless, events after its seq come from the table.
    row = await hub.job(job_id)
    if after_seq > row["seq"]:
        raise InvalidArgument.one("after_seq", f"is past the target's current seq {row['seq']}")
    sub = hub.subscribe(job_id, row["seq"])
    try:
        hub._mark(job_id)  # deliver anything written between our read and the subscription
        missed = await hub.replay(job_id, after_seq, row["seq"]) if 0 < after_seq < row["seq"] else None
        if row["stage"] in TERMINAL:
            yield Update(row, snapshot=True, final=True)
            return
        if missed:
            for i, event in enumerate(missed):
                yield Update(event, snapshot=i == 0)
        else:
            yield Update(row, snapshot=True)
        last = row
        while True:
            try:
                await asyncio.wait_for(sub.wake.wait(), heartbeat_seconds)
            except TimeoutError:
                yield Update(last, heartbeat=True)
                continue
            events, resync = sub.take()
            if resync:
                last = await hub.job(job_id, sub.last_seq)
                sub.last_seq = max(sub.last_seq, last["seq"])
                if last["stage"] in TERMINAL:
                    yield Update(last, snapshot=True, final=True)
                    return
                yield Update(last, snapshot=True)
                continue
            for event in events:
                if event["stage"] in TERMINAL:
                    # Keyed by this event's seq: the shared read starts after the final write committed.
                    yield Update(await hub.job(job_id, event["seq"]), final=True)
                    return
                last = event
                yield Update(event)
    finally:
        hub.unsubscribe(sub)
