"""Units of work that must not stop halfway when their caller is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
_running: set[asyncio.Future[Any]] = set()  # strong references: a shielded task must not be collected


async def to_completion(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to its end even if the caller is cancelled (a client deadline, a shutdown).

    Upload + commit + cleanup is one such unit: cancelled during COMMIT, a transaction has
    usually committed anyway, and a cleanup that then deleted "our" upload would leave
    the committed row pointing at nothing.
    """
    task = asyncio.ensure_future(coro)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return await asyncio.shield(task)
