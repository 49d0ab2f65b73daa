"""One host process: roles started in order around one domain, stopped in reverse.

A role is one thing a process does: own the embedded Postgres, hold the domain, run
periodic maintenance, run jobs, serve gRPC. `python -m server` and `python -m worker`
differ only in their list of roles (worker/host.py and server/__main__.py); later
roles (an HTTP face, a sweeper) are added to a list, not to a second start-up sequence.

Start-up: each role's `start` in order; a role finds what earlier ones set up in the
`HostContext` (the database URL, the domain). If one fails, the ones started (it
included) are drained and every role is stopped: `stop` must work in any state.
Shutdown (SIGTERM/SIGINT, or `Host.stop`) runs in two steps:

1. `drain(grace)` on every role at once: stop taking new work and let what is in
   flight finish within the shared grace period (gRPC calls, job units);
2. `stop()` on each role in reverse order, started or not: release what it holds (tasks, processes,
   connections), so the domain outlives the roles that use it, and Postgres the domain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from core.config import Settings
from core.database import DataDirInUse, EmbeddedPostgres
from core.definitions import Registry, load_registry
from core.domain import Domain, open_domain

log = logging.getLogger("derivatives.host")


def registry_or_exit(settings: Settings) -> Registry:
    """The derivative definitions for a command's main(): a bad file prints one line and exits 2."""
    try:
        return load_registry(settings.definitions_file)
    except (ValueError, OSError) as exc:
        print(f"configuration error: DERIVATIVES_DEFINITIONS: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


@dataclass
class HostContext:
    """What the roles of one process share; filled in as they start."""

    settings: Settings
    registry: Registry
    # Postgres application_name of this process ("derivatives-server", "derivatives-worker").
    name: str
    database_url: str = ""
    _domain: Domain | None = field(default=None, repr=False)

    @property
    def domain(self) -> Domain:
        if self._domain is None:
            raise RuntimeError("no domain yet: DomainRole must come before the roles that use it")
        return self._domain

    def provide(self, domain: Domain) -> None:
        self._domain = domain


class Role(Protocol):
    name: str

    async def start(self, ctx: HostContext) -> None: ...
    async def drain(self, grace: float) -> None: ...
    async def stop(self) -> None: ...


class EmbeddedPostgresRole:
    """Owns the private Postgres (the pgserver wheel) when no DATABASE_URL is set, and supervises it:
    if the postmaster dies, it is started again (the pool reconnects, health goes back to SERVING)."""

    name = "embedded-postgres"
    CHECK_SECONDS = 1.0

    def __init__(self, data_dir: Path) -> None:
        self.postgres = EmbeddedPostgres(data_dir)
        self._supervisor: asyncio.Task[None] | None = None

    async def start(self, ctx: HostContext) -> None:
        try:
            ctx.database_url = await asyncio.to_thread(self.postgres.start)
        except DataDirInUse as exc:
            raise SystemExit(str(exc)) from None
        self._supervisor = asyncio.create_task(self._supervise(), name="postgres-supervisor")

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(self.CHECK_SECONDS)
            try:
                await asyncio.to_thread(self.postgres.restart_if_dead)
            except Exception as exc:  # e.g. its port or files still held: try again next time
                log.error("embedded postgres could not be restarted: %s", exc)

    async def drain(self, grace: float) -> None:
        pass

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await asyncio.to_thread(self.postgres.stop)


class DomainRole:
    """Builds the domain (Postgres pool and migrations, storage, queue, ...) and closes it last."""

    name = "domain"

    def __init__(self) -> None:
        self._domain: Domain | None = None

    async def start(self, ctx: HostContext) -> None:
        url = ctx.database_url or ctx.settings.database_url
        self._domain = await open_domain(ctx.settings, ctx.registry, url, ctx.name)
        ctx.provide(self._domain)

    async def drain(self, grace: float) -> None:
        pass

    async def stop(self) -> None:
        if self._domain is not None:
            await self._domain.close()


class Host:
    def __init__(self, settings: Settings, registry: Registry, roles: Sequence[Role], name: str) -> None:
        self.ctx = HostContext(settings, registry, name)
        self.roles = list(roles)
        self._stop = asyncio.Event()
        self._grace: float | None = None  # the shutdown's grace period, if not the configured one

    def stop(self, grace: float | None = None) -> None:
        """Begin the shutdown sequence (what SIGTERM and SIGINT do); `grace` shortens the configured one."""
        if grace is not None:
            self._grace = grace if self._grace is None else min(grace, self._grace)
        self._stop.set()

    async def run(self, ready: asyncio.Event | None = None) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        started: list[Role] = []  # a role that fails half-way is stopped too: stop() takes any state
        try:
            for role in self.roles:
                started.append(role)
                await role.start(self.ctx)
            log.info("started: %s", ", ".join(r.name for r in started))
            if ready is not None:
                ready.set()
            await self._stop.wait()
        finally:
            await self._shutdown(started)
            # Stopped: a SIGTERM repeated by a supervisor must not kill the interpreter while it exits (status
            # -15 instead of 0), and Ctrl-C must still break a teardown that hangs. Each disposition changes in
            # one step (handler -> ignore, handler -> KeyboardInterrupt), and the signals leave the loop's table
            # so that closing the loop does not put the default, fatal, action back (CPython's unix loop).
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            handlers = getattr(loop, "_signal_handlers", {})
            for sig in (signal.SIGTERM, signal.SIGINT):
                handlers.pop(sig, None)
            if not handlers:
                signal.set_wakeup_fd(-1)  # as the loop does when its last handler goes: its socket closes soon

    async def _shutdown(self, started: list[Role]) -> None:
        grace = self.ctx.settings.shutdown_grace_seconds
        if self._grace is not None:
            grace = min(grace, self._grace)
        log.info("shutting down: in-flight work gets up to %.0fs", grace)
        drains = await asyncio.gather(*(r.drain(grace) for r in reversed(started)), return_exceptions=True)
        for role, result in zip(reversed(started), drains, strict=True):
            if isinstance(result, BaseException):
                log.error("draining %s failed: %s", role.name, result)
        # Every role, started or not: a role may hold resources from before start (the runner's pool).
        for role in reversed(self.roles):
            try:
                await role.stop()
            except Exception as exc:  # the rest must still stop
                log.error("stopping %s failed: %s", role.name, exc)
        log.info("stopped")
