"""Progress fan-out: one LISTEN connection per process, one shared feed per job, many watchers.

NOTIFY only wakes the hub; it reads a job's new events from `progress_events` once (not once
per watcher) into the job's `JobFeed` and wakes the job's watchers with one shared signal. A
watcher keeps only a cursor (the last seq it was sent) into the feed, so handing an event to N
watchers is N wake-ups and no per-watcher copies or buffers. A periodic re-read covers a missed
notification or a reconnect. Heartbeats are per job too: one timer, re-armed at each change.

Coalescing (the rule, in `plan`): a watcher is sent every change that arrives while it is idle
(waiting for one). Changes that arrive while it is busy (its stream still sending the previous
event, or its turn on the event loop not come yet) are coalesced: it is sent the latest state
once, as a snapshot. A final event and a new attempt's first event (a takeover or a restart,
`_restarted`) are never coalesced away. The feed keeps the last BUFFER events; a watcher further
behind than that gets the latest state as a snapshot too.

Subscribing reads nothing when it need not: a new watcher of a job that has a feed gets the feed's
latest state as its snapshot (and its missed events from the feed when it holds them); a watcher of
a job that ended gets the final state read for an earlier watcher (kept FINAL_SECONDS: a terminal
job does not change) and no feed. Only the first watcher of a job in this process reads the job.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import psycopg

from core import metrics
from core.database import Database
from core.errors import InvalidArgument
from core.lru import ExpiringLRU
from core.queue import PROGRESS_CHANNEL, JobQueue
from core.records import Job, ProgressEvent
from core.singleflight import SingleFlight

log = logging.getLogger("derivatives.progress")

BUFFER = 256
READ_LIMIT = 1000
FINAL_SECONDS = 5.0  # a terminal job's final state is reused this long for new watchers
FINALS_KEPT = 1000


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

    @property
    def key(self) -> tuple[uuid.UUID, int, bool, bool, bool]:
        """Equal for updates that say the same thing (a seq's content never changes), whichever
        watcher they go to: a face may encode an update once per key and send the bytes to all."""
        return self.event.job_id, self.event.seq, self.snapshot, self.heartbeat, self.final


class JobFeed:
    """One job's recent events in this process, shared by all its watchers (see the module docstring).

    `events` holds the last BUFFER events read (ascending seq), `head` the highest seq read,
    `floor` the seq below which events were dropped (a cursor below it has a gap). `latest` is
    the job's state at `head` (a new watcher's snapshot). `final` is the final update, set with
    the terminal event. `beats` counts heartbeats.
    """

    def __init__(self, latest: ProgressEvent, heartbeat_seconds: float) -> None:
        self.job_id = latest.job_id
        self.head = latest.seq
        self.floor = latest.seq
        self.latest = latest
        self.seqs: list[int] = []
        self.events: list[ProgressEvent] = []
        self.final: Update | None = None
        self.beats = 0
        self.watchers = 0
        self.heartbeat_seconds = heartbeat_seconds
        self._waiters: list[asyncio.Future[int]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False  # its last watcher left: no more heartbeats (a read under way may still add)

    def add(self, events: list[ProgressEvent], final: Update | None = None) -> bool:
        """Keep the events past `head` (and the final update, with the terminal event); wake the
        watchers if there was anything new. Once per job, not per watcher."""
        fresh = [e for e in events if e.seq > self.head]
        if not fresh:
            return False
        self.seqs += [e.seq for e in fresh]
        self.events += fresh
        if len(self.events) > BUFFER:
            drop = len(self.events) - BUFFER
            self.floor = self.seqs[drop - 1]
            del self.seqs[:drop], self.events[:drop]
        self.head = fresh[-1].seq
        self.latest = fresh[-1]
        if final is not None:
            self.final = final
        self._wake()
        return True

    def after(self, seq: int) -> tuple[list[ProgressEvent], bool]:
        """The events past `seq`, and whether some between were already dropped (a gap)."""
        if seq >= self.head:
            return [], False
        return self.events[bisect.bisect_right(self.seqs, seq) :], seq < self.floor

    async def wait(self) -> int:
        """Until the next change or heartbeat: the head at that moment (what arrived while waiting)."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        if self._timer is None:
            self._arm()
        return await fut  # cancelled (the watcher left): only this watcher's future is

    def beat(self) -> None:
        self.beats += 1
        self._wake()

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for fut in self._waiters:
            fut.cancel()
        self._waiters = []

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        head = self.head
        for fut in waiters:
            if not fut.done():
                fut.set_result(head)
        self._arm()

    def _arm(self) -> None:
        """(Re)start the heartbeat: heartbeat_seconds after the job's last change or heartbeat."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._closed:
            self._timer = asyncio.get_running_loop().call_later(self.heartbeat_seconds, self.beat)


def plan(last: ProgressEvent, pending: list[ProgressEvent], idle_upto: int, gap: bool) -> list[ProgressEvent | Update]:
    """What a watcher is sent for `pending` (the events past its cursor), its last event sent being `last`.

    Events up to seq `idle_upto` arrived while it was idle: each is sent. The rest arrived while it
    was busy: only the latest is sent, as a snapshot, except that a new attempt's first event
    (`_restarted`) and the terminal event are never dropped. `gap`: events before `pending` were
    already dropped, so the first one sent is a snapshot. Stops at the terminal event, returned
    as the event itself (the caller sends its final update); the others come as updates.
    """
    out: list[ProgressEvent | Update] = []
    skipped = gap
    before = last
    for i, event in enumerate(pending):
        if event.stage.terminal:
            out.append(event)
            break
        restarted = _restarted(before, event)
        before = event
        is_latest = i == len(pending) - 1
        if event.seq <= idle_upto or restarted or is_latest:
            out.append(Update(event, snapshot=skipped or restarted))
            skipped = False
        else:
            skipped = True
    return out


class ProgressHub:
    """A process's fan-out of job progress to its watchers (see the module docstring)."""

    def __init__(self, db: Database, queue: JobQueue, heartbeat_seconds: float, reread_seconds: float = 2.0) -> None:
        self.db = db
        self.queue = queue
        self.heartbeat_seconds = heartbeat_seconds
        self._reads: SingleFlight[Job] = SingleFlight()
        self.reread_seconds = reread_seconds
        self._feeds: dict[uuid.UUID, JobFeed] = {}
        self._finals: ExpiringLRU[uuid.UUID, Update] = ExpiringLRU(FINALS_KEPT)  # job id -> its final snapshot
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

    def following(self, job_id: uuid.UUID) -> bool:
        """Whether this process follows the job live (a feed of it, the job not ended): a new watcher reads nothing."""
        feed = self._feeds.get(job_id)
        return feed is not None and feed.final is None

    def _subscribe(self, job: Job) -> JobFeed:
        job_id = job.job_id
        feed = self._feeds.get(job_id)
        if feed is None:
            feed = self._feeds[job_id] = JobFeed(ProgressEvent.of_job(job), self.heartbeat_seconds)
            # Deliver anything written between the caller's read and now (a NOTIFY that came before the feed
            # existed was dropped). A feed that existed heard every NOTIFY since: no read per new watcher.
            self._mark(job_id)
        return self._join(feed)

    def _join(self, feed: JobFeed) -> JobFeed:
        feed.watchers += 1
        metrics.watchers_changed(1)
        return feed

    def _unsubscribe(self, feed: JobFeed) -> None:
        feed.watchers -= 1
        metrics.watchers_changed(-1)
        if feed.watchers == 0 and self._feeds.get(feed.job_id) is feed:
            del self._feeds[feed.job_id]
            feed.close()

    def _mark(self, job_id: uuid.UUID) -> None:
        if job_id in self._feeds:
            self._dirty.add(job_id)
            self._kick.set()

    async def _listen(self) -> None:
        # Outside the pool: a LISTEN connection is held for the life of the process.
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.db.url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {PROGRESS_CHANNEL}")
                    for job_id in list(self._feeds):  # catch up on anything missed while disconnected
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
            for job_id in list(self._feeds):
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
        feed = self._feeds.get(job_id)
        while feed is not None and feed.final is None:
            events = await self._events_after(job_id, feed.head, READ_LIMIT)
            final = None
            for event in events:
                if event.stage.terminal:
                    # Keyed by this event's seq: the shared read starts after the final write committed.
                    job = await self.job(job_id, event.seq)
                    final = Update(ProgressEvent.of_job(job), job=job)
                    self._final_snapshot(job)
                    break
            feed.add(events, final)
            if len(events) < READ_LIMIT:
                return
            feed = self._feeds.get(job_id)

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

    def _final_snapshot(self, job: Job) -> Update:
        """A terminal job's final update as a new watcher's snapshot, kept for the next ones (it never changes)."""
        final = self._finals.get(job.job_id)
        if final is None or final.event.seq < job.seq:
            final = Update(ProgressEvent.of_job(job), snapshot=True, job=job)
            self._finals.put(job.job_id, final, FINAL_SECONDS)
        return final

    async def watch(self, job_id: uuid.UUID, after_seq: int = 0) -> AsyncGenerator[Update, None]:
        """A job's progress: first its state (or the events missed since `after_seq`), then each
        change (coalesced while the watcher is busy, see `plan`), heartbeats while quiet, and a
        final update carrying the whole job. Reads the job only when this process has neither a
        feed of it nor its recent final state (see the module docstring)."""
        final = self._finals.get(job_id)
        if final is not None and after_seq <= final.event.seq:
            yield _sent(final)
            return
        feed = self._feeds.get(job_id)
        if feed is None or after_seq > feed.head:  # (a client may have seen a seq this feed has not read yet)
            # A read shared with other watchers may predate our request: harmless for the events (those after
            # its seq come from the table), but not for the check below, so it is keyed by `after_seq`: a read
            # shared under that key was started by a caller that had already seen that seq committed.
            job = await self.job(job_id, max(after_seq, 0))
            if after_seq > job.seq:
                raise InvalidArgument.one("after_seq", f"is past the target's current seq {job.seq}")
            if job.stage.terminal:
                yield _sent(self._final_snapshot(job))
                return
            feed = self._subscribe(job)
            last = ProgressEvent.of_job(job)
        else:
            feed = self._join(feed)
            last = feed.latest
        try:
            if feed.final is not None and feed.head <= last.seq:  # the job ended at `last`
                assert feed.final.job is not None
                yield _sent(self._final_snapshot(feed.final.job))
                return
            missed = await self._missed(feed, after_seq, last.seq) if 0 < after_seq < last.seq else None
            if missed:
                for i, event in enumerate(missed):
                    yield _sent(Update(event, snapshot=i == 0 or _restarted(missed[i - 1], event)))
            else:
                yield _sent(Update(last, snapshot=True))
            async for update in follow(feed, last):
                yield update
        finally:
            self._unsubscribe(feed)

    async def _missed(self, feed: JobFeed, after_seq: int, upto_seq: int) -> list[ProgressEvent] | None:
        """Events (after_seq, upto_seq], from the feed when it holds them all, else from the table (None
        when some were pruned: the caller sends a snapshot)."""
        held, gap = feed.after(after_seq)
        held = [e for e in held if e.seq <= upto_seq]
        if not gap and len(held) == upto_seq - after_seq:
            return held
        return await self._replay(feed.job_id, after_seq, upto_seq)


async def follow(feed: JobFeed, last: ProgressEvent) -> AsyncIterator[Update]:
    """A watcher of `feed` after `last` (the state it was sent): each change (coalesced while it is busy,
    see `plan`), a heartbeat repeating `last` when the feed beats while nothing changed, and the final update.

    Its own state is a cursor and two counters: the per-watcher cost of an event is a wake-up and a slice.
    """
    cursor, beats = last.seq, feed.beats
    idle_upto = cursor  # what arrives before the first wait arrives while the caller sends `last`: busy
    while True:
        pending, gap = feed.after(cursor)
        if not pending:
            idle_upto = await feed.wait()
            if feed.beats != beats and feed.head <= cursor:
                beats = feed.beats
                yield _sent(Update(last, heartbeat=True))
            continue
        beats = feed.beats
        cursor = pending[-1].seq
        for item in plan(last, pending, idle_upto, gap):
            if isinstance(item, ProgressEvent):  # terminal: the feed has its final update
                assert feed.final is not None
                yield _sent(feed.final)
                return
            last = item.event
            yield _sent(item)
        idle_upto = cursor


def _sent(update: Update) -> Update:
    """`update`, counted for the metrics as it is handed to a watcher."""
    metrics.progress_sent(
        "final" if update.final else "heartbeat" if update.heartbeat else "snapshot" if update.snapshot else "event"
    )
    return update


def _restarted(before: ProgressEvent, event: ProgressEvent) -> bool:
    """A new attempt after a started one (a takeover, a retry) starts over from done 0: a snapshot,
    not the next step. The first start (attempt 0 -> 1) is the next step."""
    return event.attempt != before.attempt and before.attempt > 0
