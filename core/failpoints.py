"""Test-only failpoints: stop a process dead at an exact step, or hold it there, so a drill can show
what a crash leaves behind and what a race does.

Tests set DERIVATIVES_TEST_FAILPOINTS to a comma-separated list of `name` or `name@n` (SIGKILL the
n-th time that step is reached), `name~seconds` (wait that long there, the event loop free),
`name?path` (wait there until the file `path` exists, the event loop free: the test creates it once
it has done what must happen first; without a timer to guess) and `name=value` (a number a test may
set below its production bounds, see `number`);
nothing else sets it, and without it a failpoint costs one environment lookup. A kill sends
SIGKILL: no cleanup, no `finally`, as when the power goes out. From a pool process,
`whole_server=True` kills the server that spawned it first.
"""

from __future__ import annotations

import asyncio
import os
import signal

ENV = "DERIVATIVES_TEST_FAILPOINTS"
_counts: dict[str, int] = {}
POLL_SECONDS = 0.02  # how often a `name?path` hold looks for its file


def _armed(name: str) -> tuple[str, str] | None:
    for entry in os.environ.get(ENV, "").split(","):
        entry = entry.strip()
        for sep in ("@", "~", "?"):
            if entry.partition(sep)[0] == name and sep in entry:
                return sep, entry.partition(sep)[2]
        if entry == name:
            return "@", "1"
    return None


def hit(name: str, whole_server: bool = False) -> None:
    """SIGKILL here, if armed (`name` or `name@n`)."""
    if ENV not in os.environ:
        return
    armed = _armed(name)
    if armed is None or armed[0] != "@":
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] < int(armed[1]):
        return
    if whole_server:
        os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def number(name: str, default: float) -> float:
    """A setting a test may override below its production bounds (`name=value`), e.g. `gc_grace=0`."""
    if ENV not in os.environ:
        return default
    for entry in os.environ[ENV].split(","):
        key, sep, value = entry.strip().partition("=")
        if sep and key == name:
            return float(value)
    return default


async def hold(name: str) -> None:
    """Wait here, if armed (`name~seconds`, `name?path`); a kill failpoint of the same name fires too."""
    if ENV not in os.environ:
        return
    armed = _armed(name)
    if armed is not None and armed[0] == "~":
        await asyncio.sleep(float(armed[1]))
    elif armed is not None and armed[0] == "?":
        # Polled: nothing to wait on (another process makes the file); a stat is cheap, and test-only.
        while not os.path.exists(armed[1]):  # noqa: ASYNC110, ASYNC240
            await asyncio.sleep(POLL_SECONDS)
    else:
        hit(name)
