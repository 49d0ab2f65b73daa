"""The HTTP face as a role of the host (server/http_app.py): uvicorn inside the host's event loop.

uvicorn's own signal handling is off: the host's shutdown sequence drains it (no new connections,
in-flight requests and event streams get the grace period) like the gRPC role.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from core.config import split_listen
from core.host import HostContext
from server.auth import Security, is_loopback
from server.http_app import make_app
from server.ports import PortLock, PortLocked

log = logging.getLogger("derivatives.http")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the host handles SIGTERM/SIGINT


async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
    """uvicorn's serve(); a sys.exit() in it becomes an ordinary error (a SystemExit raised in a task would
    stop the event loop at once, with the host's shutdown half done)."""
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:
        raise RuntimeError(f"the HTTP server exited ({exc.code})") from None


class HttpRole:
    name = "http"

    def __init__(self, security: Security, *, reuse_port: bool = False) -> None:
        self.security = security
        self.reuse_port = reuse_port  # one of several serving processes of a host (server/processes.py)
        self.lock: PortLock | None = None
        self.server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, ctx: HostContext) -> None:
        settings = ctx.settings
        host, port = split_listen(settings.http_listen)
        loopback = is_loopback(settings.http_listen)
        app = make_app(ctx.domain, self.security, settings, loopback)
        tls = {"ssl_certfile": settings.tls_cert, "ssl_keyfile": settings.tls_key} if settings.tls_cert else {}
        config = uvicorn.Config(
            app.app,
            host=host or "0.0.0.0",
            port=port,
            log_config=None,  # our logging, our format
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
            **tls,  # type: ignore[arg-type]
        )
        server = _Server(config)
        try:  # bound here, not by uvicorn: its failure to bind is a sys.exit() inside a task, which stops the loop
            sock = socket.create_server((config.host, config.port), reuse_port=self.reuse_port)
        except OSError as exc:
            raise SystemExit(f"cannot listen on {settings.http_listen} (HTTP): {exc.strerror}") from None
        if not self.reuse_port:  # a server of its own: the port's lock (server/ports.py); children share the parent's
            try:
                self.lock = PortLock.take(sock.getsockname()[1], f"{settings.http_listen} (HTTP)")
            except PortLocked as exc:
                sock.close()
                raise SystemExit(str(exc)) from None
        self._task = asyncio.create_task(_serve(server, sock), name="http")
        while not server.started:
            if self._task.done():
                self._task.result()  # its error, as an Exception (never SystemExit: see _serve)
                raise SystemExit(f"the HTTP server on {settings.http_listen} stopped during start-up")
            await asyncio.sleep(0.02)
        self.server = server
        scheme = "https" if tls else "http"
        log.info("serving HTTP on %s://%s%s", scheme, settings.http_listen, " (demo page at /)" if loopback else "")

    async def drain(self, grace: float) -> None:
        if self.server is not None and self._task is not None:
            self.server.should_exit = True
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), grace + 1)
            if not self._task.done():
                self.server.force_exit = True
                self._task.cancel()

    async def stop(self) -> None:
        if self.lock is not None:
            self.lock.release()
