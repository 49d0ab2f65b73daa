"""Test-only failpoints (core/failpoints.py): the holds a drill uses to order a race without guessing at timings."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core import failpoints


def test_a_hold_on_a_file_waits_until_the_file_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    go = tmp_path / "go"
    monkeypatch.setenv(failpoints.ENV, f"other~5,somewhere?{go}")

    async def scenario() -> None:
        held = asyncio.create_task(failpoints.hold("somewhere"))
        await asyncio.sleep(10 * failpoints.POLL_SECONDS)
        assert not held.done()  # still waiting: the event loop is free meanwhile (this line runs)
        go.touch()
        await asyncio.wait_for(held, 5)
        await asyncio.wait_for(failpoints.hold("somewhere"), 5)  # the file is there: no wait at all
        await asyncio.wait_for(failpoints.hold("elsewhere"), 5)  # not armed

    asyncio.run(scenario())


def test_a_hold_for_seconds_still_waits_that_long(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(failpoints.ENV, "somewhere~0.2")

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await failpoints.hold("somewhere")
        return loop.time() - started

    assert asyncio.run(scenario()) >= 0.2


def test_a_file_hold_is_no_kill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(failpoints.ENV, f"somewhere?{tmp_path / 'never'}")
    failpoints.hit("somewhere")  # a kill failpoint of that name is not armed: this process lives on
