"""The HTTP face as a role of the host (server/http_app.py): uvicorn inside the host's event loop.

uvicorn's own signal handling is off: the host's shutdown sequence drains it (no new connections,
in-flight requests and event streams get the grace period) like the gRPC role.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn

from core.host import HostContext
from server.auth import Security, is_loopback
from server.http_app import make_app

log = logging.getLogger("derivatives.http")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the host handles SIGTERM/SIGINT


class HttpRole:
    name = "http"

    def __init__(self, security: Security) -> None:
        self.security = security
        self.server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, ctx: HostContext) -> None:
        settings = ctx.settings
        host, _, port = settings.http_listen.rpartition(":")
        loopback = is_loopback(settings.http_listen)
        app = make_app(ctx.domain, self.security, settings, loopback)
        tls = {"ssl_certfile": settings.tls_cert, "ssl_keyfile": settings.tls_key} if settings.tls_cert else {}
        config = uvicorn.Config(
            app.app,
            host=host.strip("[]") or "0.0.0.0",
            port=int(port),
            log_config=None,  # our logging, our format
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
            **tls,  # type: ignore[arg-type]
        )
        server = _Server(config)
        self._task = asyncio.create_task(server.serve(), name="http")
        while not server.started:
            if self._task.done():  # e.g. the port is taken
                self._task.result()
                raise SystemExit(f"cannot listen on {settings.http_listen} (HTTP)")
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
        pass
