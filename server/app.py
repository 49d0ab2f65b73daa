"""Server lifecycle: dependencies up, gRPC serve, graceful drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import math
import signal
from contextlib import AsyncExitStack

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from core.assets import Assets
from core.bundles import Bundles
from core.config import Settings
from core.database import Database, EmbeddedPostgres
from core.definitions import load_registry
from core.derivatives import Derivatives
from core.jobs import Jobs
from core.progress import ProgressHub
from core.storage import ObjectStorage, open_storage
from core.works import Works
from derivatives.v1 import derivatives_pb2, derivatives_pb2_grpc
from server.health import HealthMonitor
from server.service import DerivativeService, Domain
from worker.pool import WorkerPool
from worker.runner import Runner

log = logging.getLogger("derivatives.server")

KEEPALIVE = [
    # Long-lived WatchProgress streams: ping idle connections, tolerate client pings.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("pgserver", "pyvips"):  # they log every subprocess and deprecation at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)


JOB_RETENTION_SECONDS = 7 * 24 * 3600.0


async def maintenance(bundles: Bundles, jobs: Jobs, interval: float) -> None:
    """Periodic sweeps: the bundle cache reaper, and forgetting jobs finished a week ago."""
    while True:
        try:
            await bundles.reap()
            await jobs.prune(JOB_RETENTION_SECONDS)
        except Exception as exc:  # the database or storage is away: next round
            log.warning("maintenance: %s", exc)
        await asyncio.sleep(interval)


async def install_bundle_expiry(settings: Settings, storage: ObjectStorage) -> None:
    """On S3, a lifecycle rule on the bundle bucket backs up the reaper (it counts from creation, not access)."""
    if storage.backend != "s3":
        return
    if settings.bucket_bundles in (settings.bucket_originals, settings.bucket_derivatives):
        log.warning("bundle bucket is shared with other data: no lifecycle expiry installed")
        return
    days = max(1, math.ceil(settings.bundle_idle_seconds / 86400)) + 1
    try:
        await asyncio.to_thread(storage.ensure_buckets, (settings.bucket_bundles,))
        await asyncio.to_thread(storage.expire_after, settings.bucket_bundles, days)
        log.info("bundle bucket %s: objects expire %d days after creation (backstop)", settings.bucket_bundles, days)
    except Exception as exc:
        log.warning("could not install the bundle bucket lifecycle rule: %s", exc)


async def serve(settings: Settings, ready: asyncio.Event | None = None) -> None:
    registry = load_registry(settings.definitions_file)  # a bad file stops start-up, before anything runs
    # The pool is spawned before gRPC starts any thread: neither gRPC nor libvips survives fork.
    pool = WorkerPool(settings, settings.workers) if settings.workers > 0 else None
    if pool is not None:
        pool.warm()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async with AsyncExitStack() as stack:
        if pool is not None:
            stack.callback(pool.shutdown)
        url = settings.database_url
        if not url:
            embedded = EmbeddedPostgres(settings.data_path)
            url = await asyncio.to_thread(embedded.start)
            stack.callback(embedded.stop)
        db = Database(url, max_size=settings.db_pool_size, name="derivatives-server")
        await db.open()
        stack.push_async_callback(db.close)
        await db.migrate()

        storage = open_storage(settings)
        jobs = Jobs(db, settings.job_lease_seconds)
        domain = Domain(
            settings=settings,
            storage=storage,
            assets=Assets(db, storage, settings, jobs),
            works=Works(db),
            registry=registry,
            jobs=jobs,
            derivatives=Derivatives(db, storage, settings.bucket_derivatives),
            hub=ProgressHub(db, jobs.get),
            bundles=Bundles(db, storage, settings, registry, jobs),
        )
        runner = Runner(db, storage, settings, registry, pool) if pool is not None else None

        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                *KEEPALIVE,
            ]
        )
        derivatives_pb2_grpc.add_DerivativeServiceServicer_to_server(DerivativeService(domain), server)
        buckets = settings.buckets + registry.buckets()
        monitor = HealthMonitor(db, storage, buckets, settings.health_interval_seconds)
        health_pb2_grpc.add_HealthServicer_to_server(monitor.servicer, server)
        reflection.enable_server_reflection(
            [
                derivatives_pb2.DESCRIPTOR.services_by_name["DerivativeService"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        port = server.add_insecure_port(settings.listen)
        if port == 0:
            raise SystemExit(f"cannot listen on {settings.listen}")
        await monitor.start()
        await install_bundle_expiry(settings, storage)
        domain.hub.start()
        reaper = asyncio.create_task(
            maintenance(domain.bundles, jobs, settings.bundle_reap_interval_seconds), name="maintenance"
        )
        await server.start()
        if runner is not None:
            runner.start()
        log.info("serving derivatives.v1.DerivativeService on %s (storage: %s)", settings.listen, storage.backend)
        if ready is not None:
            ready.set()

        await stop.wait()
        log.info("shutting down: draining in-flight calls for up to %.0fs", settings.shutdown_grace_seconds)
        await monitor.shutdown()
        await asyncio.gather(
            server.stop(settings.shutdown_grace_seconds),
            runner.stop(settings.shutdown_grace_seconds) if runner is not None else asyncio.sleep(0),
        )
        reaper.cancel()
        await domain.hub.stop()
        if pool is not None and runner is not None:
            await asyncio.to_thread(pool.shutdown)
            await runner.drain_cleanups()
        log.info("stopped")
