"""Reads shared by concurrent callers (SingleFlight) and a watcher's bounded view of a job (Subscription)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable

import pytest

from core.progress import BUFFER, Subscription
from core.records import ProgressEvent, Stage
from core.singleflight import SingleFlight

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


# --- Subscription ------------------------------------------------------------------------------------------------

JOB = uuid.UUID(int=1)
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def events(*seqs: int) -> list[ProgressEvent]:
    return [ProgressEvent(JOB, s, Stage.RUNNING, s, 1000, T0, attempt=1) for s in seqs]


def seqs(found: list[ProgressEvent]) -> list[int]:
    return [e.seq for e in found]


def test_push_then_take_in_order() -> None:
    sub = Subscription(JOB, 0)
    assert not sub.wake.is_set()
    sub.push(events(1, 2, 3))
    assert sub.wake.is_set()
    sub.push(events(4, 5))
    taken, resync = sub.take()
    assert (seqs(taken), resync) == ([1, 2, 3, 4, 5], False)
    assert not sub.wake.is_set()
    assert sub.take() == ([], False)
    assert sub.last_seq == 5


def test_events_already_seen_are_dropped_by_seq() -> None:
    sub = Subscription(JOB, 3)  # the snapshot the watcher got was at seq 3
    sub.push(events(1, 2, 3))
    assert not sub.wake.is_set() and sub.take() == ([], False)
    sub.push(events(2, 3, 4, 5))  # re-reads overlap: only what is new
    sub.push(events(4, 5))
    sub.push(events(5, 6))
    taken, resync = sub.take()
    assert (seqs(taken), resync) == ([4, 5, 6], False)
    assert sub.last_seq == 6


def test_a_full_buffer_is_kept() -> None:
    sub = Subscription(JOB, 0)
    sub.push(events(*range(1, 201)))
    sub.push(events(*range(201, BUFFER + 1)))
    taken, resync = sub.take()
    assert (seqs(taken), resync) == (list(range(1, BUFFER + 1)), False)


def test_overflow_drops_the_backlog_and_asks_for_a_resync() -> None:
    sub = Subscription(JOB, 0)
    sub.push(events(*range(1, BUFFER)))  # BUFFER - 1 waiting
    sub.push(events(BUFFER, BUFFER + 1))  # one too many
    assert sub.wake.is_set()
    assert sub.last_seq == BUFFER + 1
    assert sub.take() == ([], True)
    assert not sub.resync and not sub.wake.is_set()
    # What was dropped does not come back; later events flow again.
    sub.push(events(*range(BUFFER - 5, BUFFER + 4)))
    taken, resync = sub.take()
    assert (seqs(taken), resync) == ([BUFFER + 2, BUFFER + 3], False)


def test_one_push_larger_than_the_buffer_asks_for_a_resync() -> None:
    sub = Subscription(JOB, 0)
    sub.push(events(*range(1, BUFFER + 2)))
    assert sub.take() == ([], True)
    assert sub.last_seq == BUFFER + 1
