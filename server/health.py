"""grpc.health.v1: SERVING only while Postgres and storage answer."""

from __future__ import annotations

import asyncio
import logging

from grpc_health.v1 import health, health_pb2

from core.database import Database
from core.storage import ObjectStorage

log = logging.getLogger("derivatives.health")
SERVICE = "derivatives.v1.DerivativeService"


class HealthMonitor:
    def __init__(self, db: Database, storage: ObjectStorage, buckets: tuple[str, ...], interval: float) -> None:
        self.servicer = health.aio.HealthServicer()
        self.db = db
        self.storage = storage
        self.buckets = buckets
        self.interval = interval
        self.serving: bool | None = None
        self._buckets_ready = False
        self._reason = ""
        self._task: asyncio.Task[None] | None = None

    async def _set(self, serving: bool, reason: str = "") -> None:
        if serving != self.serving or (not serving and reason != self._reason):
            self._reason = reason
            log.log(
                logging.INFO if serving else logging.WARNING,
                "health: %s %s",
                "SERVING" if serving else "NOT_SERVING",
                reason,
            )
        self.serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            await self.servicer.set(name, status)

    async def probe(self) -> None:
        try:
            await asyncio.wait_for(self.db.ping(), timeout=5)
            await asyncio.wait_for(asyncio.to_thread(self.storage.ping), timeout=10)
            if not self._buckets_ready:
                await asyncio.to_thread(self.storage.ensure_buckets, self.buckets)
                self._buckets_ready = True
        except Exception as exc:
            self._buckets_ready = False  # storage may come back empty (a new endpoint): check again
            await self._set(False, f"({type(exc).__name__}: {exc})")
        else:
            await self._set(True)

    async def start(self) -> None:
        await self._set(False, "(starting)")
        await self.probe()
        self._task = asyncio.create_task(self._loop(), name="health")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.probe()

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.servicer.enter_graceful_shutdown()
