"""Concurrent identical reads share one query.

A thousand watchers of one bundle all want the same job and bundle rows at the same
moment (subscribing, or on the final event): one database round trip serves them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class SingleFlight(Generic[V]):
    def __init__(self) -> None:
        self._calls: dict[Hashable, asyncio.Future[V]] = {}

    async def do(self, key: Hashable, fetch: Callable[[], Awaitable[V]]) -> V:
        """The result of `fetch()`, shared with every caller asking for `key` while it runs.

        The key must say how fresh the answer has to be (e.g. include the seq a caller has
        seen): a call already under way started before this one asked.
        """
        future = self._calls.get(key)
        if future is None:
            future = asyncio.ensure_future(fetch())
            self._calls[key] = future
            future.add_done_callback(lambda _: self._calls.pop(key, None))
        # One caller's cancellation (a watcher leaving) must not cancel the others' read.
        return await asyncio.shield(future)
