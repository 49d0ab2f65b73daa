"""Several serving processes on one host (DERIVATIVES_SERVER_PROCESSES = N > 1).

One Python process serves gRPC on one event loop; a busy host wants more. With N > 1 the
process `python -m server` starts becomes a parent that owns what must exist once per host
(the embedded Postgres and the lock on its data directory, the job runner and its pool,
maintenance, the metrics endpoint) and starts N children, `python -m server.child`, each
with its own gRPC server, HTTP face and progress hub, all on the same port (SO_REUSEPORT:
the kernel hands each new connection to one of them; a connection stays with its process,
so a client needs several channels to use several processes).

What holds the port against a second server: the port lock (server/ports.py, one per port number,
taken by every derivatives server, one process or several, and passed to the children so orphans
keep it while they drain), then the parent binds each address with SO_REUSEPORT (and SO_REUSEADDR,
as gRPC does) and keeps that socket, never listening, so its children can join; a listener of
another program without SO_REUSEPORT makes that bind fail. The data directory's lock
(core/database.py) refuses a second server on the same data.

The parent supervises: a child that exits is started again (after a pause that grows while it
keeps dying); on shutdown the children get SIGTERM and drain within the grace period, then
the parent's own roles stop. A child watches its parent and stops if the parent dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

from core import metrics
from core.config import Settings, split_list, split_listen
from core.host import HostContext
from server.links import DEMO_KEY_ID, new_secret
from server.ports import PortLock, PortLocked

log = logging.getLogger("derivatives.processes")

READY_TIMEOUT = 120.0  # seconds a child has to start serving (migrations are the parent's: this is generous)
RESTART_PAUSE = (1.0, 30.0)  # first and longest pause before a child that died is started again
STEADY_SECONDS = 60.0  # a child that ran this long before it died is started again at once


class PortTaken(Exception):
    pass


class ChildFailed(Exception):
    pass


class PortClaim:
    """The addresses of one `host:port`, bound by the parent for its children (see the module docstring)."""

    def __init__(self, listen: str, what: str) -> None:
        self.listen = listen
        self.what = what
        self.sockets: list[socket.socket] = []
        self.lock: PortLock | None = None

    def bind(self) -> str:
        """Bind every address of `listen`, lock the port; the resolved `host:port` (port 0: the port bound)."""
        host, port = split_listen(self.listen)
        try:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            for family, kind, proto, _, address in infos:
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # as gRPC binds [::]
                # As gRPC's own listeners: the children can join, and connections of the last run still in
                # TIME_WAIT do not hold a restart back. Another derivatives server is kept out by the port lock.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((address[0], port, *address[2:]))
                port = sock.getsockname()[1]  # port 0: every address on the port the first one got
        except OSError as exc:
            self.close()
            raise PortTaken(
                f"cannot listen on {self.listen}{self.what}: is another server running there? ({exc.strerror})"
            ) from None
        try:
            self.lock = PortLock.take(port, f"{self.listen}{self.what}")
        except PortLocked as exc:
            self.close()
            raise PortTaken(str(exc)) from None
        return f"{self.listen.rpartition(':')[0]}:{port}"

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()
        if self.lock is not None:
            self.lock.release()
            self.lock = None


@dataclass
class Child:
    """One serving process: its slot (1..N), the process while it runs, how often it has been started."""

    index: int
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    pause: float = RESTART_PAUSE[0]
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None  # reads the ready pipe of its current process


class ServingProcesses:
    """The role (core/host.py) of a parent host: start N serving children, keep them running, stop them."""

    name = "serving-processes"

    def __init__(self, settings: Settings) -> None:
        self.count = settings.server_processes
        self.children = [Child(i + 1) for i in range(self.count)]
        self._claims: list[PortClaim] = []
        self._env: dict[str, str] = {}
        self._supervisors: list[asyncio.Task[None]] = []
        self._stopping = False
        self._stop_event = asyncio.Event()  # set with _stopping: ends a supervisor's restart pause at once

    async def start(self, ctx: HostContext) -> None:
        settings = ctx.settings
        env = dict(os.environ)
        try:
            env["DERIVATIVES_LISTEN"] = self._claim(settings.listen, "")
            if settings.http_listen:
                env["DERIVATIVES_HTTP_LISTEN"] = self._claim(settings.http_listen, " (HTTP)")
        except PortTaken as exc:
            raise SystemExit(str(exc)) from None
        env["DATABASE_URL"] = ctx.database_url or settings.database_url
        if not split_list(settings.link_keys):  # one demo key for all: a link made by one child verifies in another
            env["DERIVATIVES_LINK_KEYS"] = f"{DEMO_KEY_ID}={new_secret()}"
        self._env = env
        for child in self.children:
            await self._spawn(child)
        # All of them serve before the host says it has started (tests and scripts can count on N processes).
        waits = [asyncio.ensure_future(self._wait_ready(child)) for child in self.children]
        try:
            await asyncio.gather(*waits)
        except ChildFailed as exc:  # SystemExit only here: raised in a task, it would stop the loop at once
            raise SystemExit(str(exc)) from None
        finally:
            for wait in waits:
                wait.cancel()
        self._supervisors = [
            asyncio.create_task(self._supervise(child), name=f"serving-{child.index}") for child in self.children
        ]
        pids = ", ".join(str(c.process.pid) for c in self.children if c.process is not None)
        log.info("%d serving processes on %s (pids %s)", self.count, env["DERIVATIVES_LISTEN"], pids)

    def _claim(self, listen: str, what: str) -> str:
        claim = PortClaim(listen, what)
        resolved = claim.bind()
        self._claims.append(claim)
        return resolved

    async def _spawn(self, child: Child) -> None:
        read_fd, write_fd = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "server.child",
                f"--index={child.index}",
                f"--parent={os.getpid()}",
                f"--ready-fd={write_fd}",
                env=self._env,
                # The port locks too: orphans still draining after the parent died keep them until they are gone.
                pass_fds=(write_fd, *(c.lock.fileno() for c in self._claims if c.lock is not None)),
                # Out of the terminal's process group: Ctrl-C reaches the parent only, which stops the children
                # itself (a child stopping on its own would look like one that died).
                start_new_session=True,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        child.process = process
        child.starts += 1
        child.ready = asyncio.Event()
        child.reader = asyncio.create_task(self._read_ready(child, read_fd), name=f"serving-{child.index}-ready")

    @staticmethod
    async def _read_ready(child: Child, read_fd: int) -> None:
        """The child writes one byte once it serves; the pipe closes (EOF) when it exits, ready or not."""
        reader = asyncio.StreamReader()
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0)
        )
        try:
            if await reader.read(1):
                child.ready.set()
        finally:
            transport.close()

    async def _wait_ready(self, child: Child) -> None:
        assert child.process is not None
        ready = asyncio.ensure_future(child.ready.wait())
        exited = asyncio.ensure_future(child.process.wait())
        try:
            await asyncio.wait([ready, exited], timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            exited.cancel()
        if not child.ready.is_set():
            code = child.process.returncode
            why = f"exited with {code}" if code is not None else f"did not serve within {READY_TIMEOUT:.0f}s"
            raise ChildFailed(f"serving process {child.index} {why} during start-up (its lines above say why)")

    async def _supervise(self, child: Child) -> None:
        """Wait for the child to exit; unless the host is stopping, start it again after a pause."""
        loop = asyncio.get_running_loop()
        while True:
            process = child.process
            assert process is not None
            started = loop.time()
            code = await process.wait()
            metrics.process_exited(process.pid)  # its live gauges go; its counts stay
            if self._stopping:
                return
            if loop.time() - started >= STEADY_SECONDS:
                child.pause = RESTART_PAUSE[0]
            log.error(
                "serving process %d (pid %d) exited with %s; starting it again in %.0fs",
                child.index,
                process.pid,
                code,
                child.pause,
            )
            while True:
                with contextlib.suppress(TimeoutError):  # the pause, cut short by a shutdown
                    await asyncio.wait_for(self._stop_event.wait(), child.pause)
                child.pause = min(RESTART_PAUSE[1], child.pause * 2)
                if self._stopping:
                    return
                try:
                    await self._spawn(child)
                    break
                except OSError as exc:  # no memory or file descriptors for now: try again, a little later
                    log.error("serving process %d could not be started: %s", child.index, exc)
            metrics.serving_process_restarted()
            if self._stopping:  # the shutdown began while it started: it drains with the others
                self._terminate(child)

    @staticmethod
    def _terminate(child: Child) -> None:
        if child.process is not None and child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)

    async def drain(self, grace: float) -> None:
        """SIGTERM to every child: each drains its calls within the grace period, as a single server would."""
        self._stopping = True
        self._stop_event.set()
        for child in self.children:
            self._terminate(child)
        # A supervisor returns once its child has exited (one it started meanwhile is signalled too); before
        # they exist (a start-up that failed half-way), the children themselves are waited for.
        waits: list[asyncio.Future[Any]] = list(self._supervisors) or [
            asyncio.ensure_future(c.process.wait()) for c in self.children if c.process is not None
        ]
        if waits:
            await asyncio.wait(waits, timeout=grace + 10)

    async def stop(self) -> None:
        self._stopping = True
        for task in self._supervisors:
            task.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        for child in self.children:
            process = child.process
            if process is not None and process.returncode is None:
                log.error("serving process %d (pid %d) did not stop: killed", child.index, process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            if process is not None:
                metrics.process_exited(process.pid)
        for claim in self._claims:
            claim.close()
