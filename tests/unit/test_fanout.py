"""Reads shared by concurrent callers (SingleFlight); a job's shared feed, its watchers, coalescing, and messages
serialized once for all watchers (JobFeed, follow, plan, ProgressMessages)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable

import pytest

from core.progress import BUFFER, JobFeed, Update, follow, plan
from core.records import DerivativesPayload, Job, JobKind, ProgressEvent, Stage
from core.singleflight import SingleFlight
from derivatives.v1 import derivatives_pb2 as pb
from server.convert import ProgressMessages

# --- SingleFlight ------------------------------------------------------------------------------------------------


class Fetcher:
    """A fetch that blocks until released, counting its calls and noticing a cancellation."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.cancelled = 0
        self.release = asyncio.Event()

    def for_key(self, key: str, fail: bool = False) -> Callable[[], Awaitable[tuple[str, int]]]:
        async def fetch() -> tuple[str, int]:
            self.calls.append(key)
            n = len(self.calls)
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            if fail:
                raise RuntimeError(f"fetch {n} of {key} failed")
            return key, n

        return fetch


def test_concurrent_identical_keys_share_one_fetch() -> None:
    async def run() -> None:
        flight: SingleFlight[tuple[str, int]] = SingleFlight()
        fetcher = Fetcher()
        tasks = [asyncio.create_task(flight.do("k", fetcher.for_key("k"))) for _ in range(5)]
        await asyncio.sleep(0.01)
        assert fetcher.calls == ["k"]
        fetcher.release.set()
        results = await asyncio.gather(*tasks)
        assert results == [("k", 1)] * 5
        assert all(r is results[0] for r in results)
        # Finished: the next caller starts a new read (the answer may be stale by now).
        assert await flight.do("k", fetcher.for_key("k")) == ("k", 2)
        assert fetcher.calls == ["k", "k"]

    asyncio.run(run())


def test_different_keys_do_not_share() -> None:
    async def run() -> None:
        flight: SingleFlight[tuple[str, int]] = SingleFlight()
        fetcher = Fetcher()
        a = asyncio.create_task(flight.do(("job", 1), fetcher.for_key("a")))
        b = asyncio.create_task(flight.do(("job", 2), fetcher.for_key("b")))
        await asyncio.sleep(0.01)
        assert sorted(fetcher.calls) == ["a", "b"]  # both under way at once
        fetcher.release.set()
        (key_a, n_a), (key_b, n_b) = await a, await b
        assert (key_a, key_b) == ("a", "b")  # each caller has its own key's answer
        assert {n_a, n_b} == {1, 2}

    asyncio.run(run())


def test_a_cancelled_caller_does_not_cancel_the_others() -> None:
    async def run() -> None:
        flight: SingleFlight[tuple[str, int]] = SingleFlight()
        fetcher = Fetcher()
        leaving = asyncio.create_task(flight.do("k", fetcher.for_key("k")))
        staying = asyncio.create_task(flight.do("k", fetcher.for_key("k")))
        await asyncio.sleep(0.01)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert fetcher.cancelled == 0
        fetcher.release.set()
        assert await staying == ("k", 1)
        assert fetcher.calls == ["k"]
        assert fetcher.cancelled == 0

    asyncio.run(run())


def test_a_read_whose_callers_all_left_still_serves_the_next_caller() -> None:
    async def run() -> None:
        flight: SingleFlight[tuple[str, int]] = SingleFlight()
        fetcher = Fetcher()
        only = asyncio.create_task(flight.do("k", fetcher.for_key("k")))
        await asyncio.sleep(0.01)
        only.cancel()
        with pytest.raises(asyncio.CancelledError):
            await only
        late = asyncio.create_task(flight.do("k", fetcher.for_key("k")))
        await asyncio.sleep(0.01)
        fetcher.release.set()
        assert await late == ("k", 1)  # joined the read still under way
        assert fetcher.calls == ["k"] and fetcher.cancelled == 0

    asyncio.run(run())


def test_a_failed_fetch_fails_every_caller_and_is_not_remembered() -> None:
    async def run() -> None:
        flight: SingleFlight[tuple[str, int]] = SingleFlight()
        fetcher = Fetcher()
        tasks = [asyncio.create_task(flight.do("k", fetcher.for_key("k", fail=True))) for _ in range(3)]
        await asyncio.sleep(0.01)
        fetcher.release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [str(r) for r in results] == ["fetch 1 of k failed"] * 3
        assert all(isinstance(r, RuntimeError) for r in results)
        assert await flight.do("k", fetcher.for_key("k")) == ("k", 2)  # retried, not the cached failure

    asyncio.run(run())


# --- a job's feed and its watchers ------------------------------------------------------------------------------

JOB = uuid.UUID(int=1)
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
NEVER = 3600.0  # a heartbeat that does not come during a test (beats are called by hand)


def ev(seq: int, attempt: int = 1, stage: Stage = Stage.RUNNING, done: int | None = None) -> ProgressEvent:
    return ProgressEvent(JOB, seq, stage, seq if done is None else done, 1000, T0, attempt=attempt)


def events(*seqs: int) -> list[ProgressEvent]:
    return [ev(s) for s in seqs]


def final_of(event: ProgressEvent) -> Update:
    job = Job(
        JOB, JobKind.CREATE_DERIVATIVES, DerivativesPayload(("a",)), event.stage, event.done, event.total,
        event.seq, event.attempt, 3, (), None, T0, T0,
    )  # fmt: skip
    return Update(ProgressEvent.of_job(job), job=job)


def sent(items: list[ProgressEvent | Update]) -> list[tuple[int, str]]:
    """(seq, what) of a plan: "step", "snapshot", or "terminal" (the caller sends the final update)."""
    return [
        (i.seq, "terminal") if isinstance(i, ProgressEvent) else (i.event.seq, "snapshot" if i.snapshot else "step")
        for i in items
    ]


# plan: the coalescing rule alone.


def test_an_idle_watcher_is_sent_every_step() -> None:
    assert sent(plan(ev(1), events(2, 3, 4), idle_upto=4, gap=False)) == [(2, "step"), (3, "step"), (4, "step")]


def test_a_busy_watcher_is_sent_the_latest_state_as_a_snapshot() -> None:
    assert sent(plan(ev(1), events(2, 3, 4), idle_upto=1, gap=False)) == [(4, "snapshot")]
    # What arrived while it was idle is sent step by step; what came after, coalesced.
    assert sent(plan(ev(1), events(2, 3, 4, 5), idle_upto=2, gap=False)) == [(2, "step"), (5, "snapshot")]


def test_one_event_while_busy_is_the_next_step_not_a_snapshot() -> None:
    assert sent(plan(ev(1), events(2), idle_upto=1, gap=False)) == [(2, "step")]


def test_a_restart_is_never_coalesced_away() -> None:
    # Attempt 1 had reached done 3; a takeover starts attempt 2 over from done 0 at seq 4.
    pending = [ev(2), ev(3), ev(4, attempt=2, done=0), ev(5, attempt=2, done=1), ev(6, attempt=2, done=2)]
    assert sent(plan(ev(1), pending, idle_upto=1, gap=False)) == [(4, "snapshot"), (6, "snapshot")]
    # Even when it is the first pending event, and when it is the latest.
    assert sent(plan(ev(3), pending[2:3], idle_upto=3, gap=False)) == [(4, "snapshot")]
    assert sent(plan(ev(1), pending[:3], idle_upto=1, gap=False)) == [(4, "snapshot")]
    # The first start (attempt 0 -> 1) is the next step.
    assert sent(plan(ev(1, attempt=0), events(2), idle_upto=2, gap=False)) == [(2, "step")]


def test_the_terminal_event_is_never_coalesced_away_and_ends_the_plan() -> None:
    pending = [ev(2), ev(3), ev(4, stage=Stage.SUCCEEDED), ev(5)]
    assert sent(plan(ev(1), pending, idle_upto=1, gap=False)) == [(4, "terminal")]
    assert sent(plan(ev(1), pending, idle_upto=5, gap=False)) == [(2, "step"), (3, "step"), (4, "terminal")]
    restarted = [ev(2, attempt=2, done=0), ev(3, attempt=2), ev(4, attempt=2, stage=Stage.FAILED)]
    assert sent(plan(ev(1), restarted, idle_upto=1, gap=False)) == [(2, "snapshot"), (4, "terminal")]


def test_after_a_gap_the_first_event_sent_is_a_snapshot() -> None:
    assert sent(plan(ev(1), events(7, 8), idle_upto=8, gap=True)) == [(7, "snapshot"), (8, "step")]
    assert sent(plan(ev(1), events(7), idle_upto=1, gap=True)) == [(7, "snapshot")]


# JobFeed: one list of events per job, a cursor per watcher.


def test_the_feed_keeps_new_events_once_and_hands_out_the_ones_past_a_cursor() -> None:
    async def run() -> None:
        feed = JobFeed(ev(3), NEVER)  # the first watcher's read was at seq 3
        assert not feed.add(events(1, 2, 3))  # nothing new: no wake-up
        assert feed.add(events(2, 3, 4, 5)) and feed.add(events(5, 6))  # re-reads overlap: only what is new
        assert feed.head == 6 and [e.seq for e in feed.events] == [4, 5, 6]
        found, gap = feed.after(4)
        assert ([e.seq for e in found], gap) == ([5, 6], False)
        assert feed.after(6) == ([], False) and feed.after(9) == ([], False)
        feed.close()

    asyncio.run(run())


def test_the_feed_keeps_the_last_buffer_events_and_a_cursor_before_them_has_a_gap() -> None:
    async def run() -> None:
        feed = JobFeed(ev(0), NEVER)
        feed.add(events(*range(1, BUFFER + 1)))
        assert feed.after(0) == (feed.events, False)  # a full buffer is kept
        feed.add(events(BUFFER + 1, BUFFER + 2))
        assert len(feed.events) == BUFFER and feed.events[0].seq == 3
        found, gap = feed.after(1)  # seq 2 was dropped
        assert (found[0].seq, found[-1].seq, gap) == (3, BUFFER + 2, True)
        assert feed.after(2)[1] is False
        feed.close()

    asyncio.run(run())


class Watcher:
    """A real follower of a feed, as a stream handler runs it; with `slow`, it is "busy sending" each
    update until the test lets it go on (`step`)."""

    def __init__(
        self, feed: JobFeed, last: ProgressEvent, slow: bool = False, messages: ProgressMessages | None = None
    ):
        self.got: list[Update] = []
        self.sent: list[bytes] = []
        self.slow = slow
        self.go_on = asyncio.Event()
        self.messages = messages
        self.task = asyncio.create_task(self._run(feed, last))

    async def _run(self, feed: JobFeed, last: ProgressEvent) -> None:
        async for update in follow(feed, last):
            self.got.append(update)
            if self.messages is not None:
                self.sent.append(self.messages.of(update))
            if self.slow and not update.final:
                await self.go_on.wait()
                self.go_on.clear()

    def step(self) -> None:
        self.go_on.set()

    def seen(self) -> list[tuple[int, str]]:
        return [(u.event.seq, _kind(u)) for u in self.got]


def _kind(u: Update) -> str:
    return "final" if u.final else "heartbeat" if u.heartbeat else "snapshot" if u.snapshot else "step"


def got(*watchers: Watcher, n: int) -> Callable[[], bool]:
    return lambda: all(len(w.got) == n for w in watchers)


async def settle(until: Callable[[], bool]) -> None:
    """Let the loop run until `until()` holds; a bounded number of turns, no clock."""
    for _ in range(10_000):
        if until():
            return
        await asyncio.sleep(0)
    raise AssertionError("the watchers did not get there")


def test_a_fast_watcher_gets_every_step_a_busy_one_the_latest_state_and_both_the_final() -> None:
    async def run() -> None:
        feed = JobFeed(ev(1), NEVER)
        fast, slow = Watcher(feed, ev(1)), Watcher(feed, ev(1), slow=True)
        feed.add(events(2))
        await settle(lambda: len(fast.got) == 1 and len(slow.got) == 1)  # the slow one is now busy with seq 2
        for seq in (3, 4, 5):
            feed.add(events(seq))
            await settle(got(fast, n=seq - 1))
        slow.step()
        await settle(lambda: len(slow.got) == 2)
        assert slow.seen() == [(2, "step"), (5, "snapshot")]  # 3 and 4 coalesced into the latest state
        done = ev(6, stage=Stage.SUCCEEDED, done=1000)
        feed.add([ev(6, stage=Stage.SUCCEEDED, done=1000)], final_of(done))
        slow.step()
        await asyncio.gather(fast.task, slow.task)
        assert fast.seen() == [(2, "step"), (3, "step"), (4, "step"), (5, "step"), (6, "final")]
        assert slow.seen() == [(2, "step"), (5, "snapshot"), (6, "final")]
        assert fast.got[-1] is slow.got[-1] is feed.final  # one final update, shared
        feed.close()

    asyncio.run(run())


def test_a_busy_watcher_gets_the_final_event_and_the_restart_never_coalesced() -> None:
    async def run() -> None:
        feed = JobFeed(ev(1), NEVER)
        slow = Watcher(feed, ev(1), slow=True)
        feed.add(events(2))
        await settle(lambda: len(slow.got) == 1)
        # While it is busy: attempt 1 goes on, then a takeover restarts from done 0, then the job ends.
        feed.add([ev(3), ev(4, attempt=2, done=0), ev(5, attempt=2, done=1)])
        done = ev(7, attempt=2, stage=Stage.SUCCEEDED, done=1000)
        feed.add([ev(6, attempt=2, done=2), done], final_of(done))
        slow.step()
        await settle(lambda: len(slow.got) == 2)
        slow.step()
        await slow.task
        assert slow.seen() == [(2, "step"), (4, "snapshot"), (7, "final")]
        assert slow.got[1].event.attempt == 2 and slow.got[1].event.done == 0
        feed.close()

    asyncio.run(run())


def test_an_idle_watcher_gets_a_heartbeat_repeating_its_last_event() -> None:
    async def run() -> None:
        feed = JobFeed(ev(1), NEVER)
        watcher = Watcher(feed, ev(1))
        await settle(lambda: bool(feed._waiters))
        feed.beat()
        await settle(lambda: len(watcher.got) == 1)
        feed.add(events(2))
        await settle(lambda: len(watcher.got) == 2)
        feed.beat()
        await settle(lambda: len(watcher.got) == 3)
        assert watcher.seen() == [(1, "heartbeat"), (2, "step"), (2, "heartbeat")]
        watcher.task.cancel()
        feed.close()

    asyncio.run(run())


def test_a_watcher_that_leaves_does_not_disturb_the_others() -> None:
    async def run() -> None:
        feed = JobFeed(ev(1), NEVER)
        leaving, staying = Watcher(feed, ev(1)), Watcher(feed, ev(1))
        await settle(lambda: len(feed._waiters) == 2)
        leaving.task.cancel()  # the client went away while waiting
        await settle(lambda: leaving.task.done())
        feed.add(events(2))
        await settle(lambda: len(staying.got) == 1)
        assert staying.seen() == [(2, "step")]
        staying.task.cancel()
        feed.close()

    asyncio.run(run())


def test_a_closed_feed_stops_its_heartbeat_even_if_a_late_read_adds_to_it() -> None:
    async def run() -> None:
        feed = JobFeed(ev(1), NEVER)
        watcher = Watcher(feed, ev(1))
        await settle(lambda: feed._timer is not None)
        watcher.task.cancel()
        await settle(lambda: watcher.task.done())
        feed.close()  # the hub closes a feed when its last watcher leaves
        assert feed._timer is None
        feed.add(events(2))  # a read that was under way for it
        feed.beat()
        assert feed._timer is None

    asyncio.run(run())


# ProgressMessages: every watcher's message for one update is serialized once.


def test_many_watchers_cost_one_serialization_per_event() -> None:
    async def run() -> None:
        messages = ProgressMessages()
        feed = JobFeed(ev(1), NEVER)
        watchers = [Watcher(feed, ev(1), messages=messages) for _ in range(500)]
        snapshot = Update(ev(1), snapshot=True)
        for w in watchers:  # each stream's first message: the same snapshot
            w.sent.append(messages.of(snapshot))
        for seq in range(2, 6):
            feed.add(events(seq))
            await settle(got(*watchers, n=seq - 1))
        feed.beat()
        await settle(lambda: all(len(w.got) == 5 for w in watchers))
        done = ev(6, stage=Stage.SUCCEEDED, done=1000)
        feed.add([done], final_of(done))
        await asyncio.gather(*(w.task for w in watchers))
        # A snapshot, 4 steps, a heartbeat and the final event: 7 serializations for 3,500 messages.
        assert messages.encoded == 7
        assert all(w.sent == watchers[0].sent for w in watchers)
        assert all(a is b for w in watchers for a, b in zip(w.sent, watchers[0].sent, strict=True))
        decoded = [pb.ProgressEvent.FromString(data) for data in watchers[0].sent]
        assert [(e.seq, e.snapshot, e.heartbeat, e.HasField("job")) for e in decoded] == [
            (1, True, False, False),
            (2, False, False, False),
            (3, False, False, False),
            (4, False, False, False),
            (5, False, False, False),
            (5, False, True, False),
            (6, False, False, True),
        ]
        feed.close()

    asyncio.run(run())


def test_a_bundle_final_is_kept_apart_from_the_jobs() -> None:
    messages = ProgressMessages()
    done = ev(6, stage=Stage.SUCCEEDED, done=1000)
    update = final_of(done)
    bundle_id = uuid.UUID(int=7)
    plain = messages.of(update)
    with_bundle = messages.encode(update, bundle_id, pb.Bundle(bundle_id=str(bundle_id)))
    assert messages.get(update) == plain and messages.get(update, bundle_id) == with_bundle
    assert pb.ProgressEvent.FromString(with_bundle).bundle.bundle_id == str(bundle_id)
    assert not pb.ProgressEvent.FromString(plain).HasField("bundle")
