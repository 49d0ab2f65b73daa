"""What a host process starts. Every process is a list of roles run by core.host.Host.

- `python -m server` (`make run`): `base_roles`, the gRPC server, `runner_roles` (server/__main__.py);
- `python -m worker` (a worker host): `base_roles`, `runner_roles`, with a shared DATABASE_URL.

| role | module | when |
| --- | --- | --- |
| tracing (the OTLP exporter, flushed on stop) | core/tracing.py `TracingRole` | an OTLP endpoint is set |
| embedded Postgres owner | core/host.py `EmbeddedPostgresRole` | no DATABASE_URL |
| the domain (pool, migrations, storage, queue, ...) | core/host.py `DomainRole`, core/domain.py | always |
| maintenance (reaper, job pruning, bundle inputs backfill, S3 lifecycle) | core/maintenance.py | always |
| metrics endpoint (every process of the host) | core/metrics.py `MetricsRole` | DERIVATIVES_METRICS_LISTEN |
| job runner and its process pool | worker/host.py `RunnerRole` | DERIVATIVES_WORKERS > 0 |
| gRPC server, health, reflection, progress hub | server/grpc_role.py `GrpcRole` | server only |
| N serving children instead of gRPC + HTTP (server/child.py) | server/processes.py `ServingProcesses` | server, N > 1 |
"""

from __future__ import annotations

import asyncio

from core.config import Settings
from core.host import DomainRole, EmbeddedPostgresRole, HostContext, Role
from core.maintenance import MaintenanceRole
from core.metrics import MetricsRole
from core.tracing import TracingRole
from core.tracing import configured as tracing_configured
from worker.bundle_job import BundleHandler
from worker.derivatives_job import DerivativesHandler
from worker.pool import WorkerPool
from worker.render import Renderer
from worker.runner import Runner


class RunnerRole:
    """The job runner with its process pool.

    The pool is spawned and warmed when the role is made, before any event loop or gRPC
    thread exists: neither gRPC nor libvips survives a fork, and a warm pool serves the
    first job at once.
    """

    name = "runner"

    def __init__(self, settings: Settings, processes: int) -> None:
        self.pool = WorkerPool(settings, processes)
        self.pool.warm()
        self.runner: Runner | None = None
        self.renderer: Renderer | None = None
        self.bundle_handler: BundleHandler | None = None

    async def start(self, ctx: HostContext) -> None:
        d = ctx.domain
        # More jobs than processes, so a long bundle build (mostly I/O) does not hold every
        # derivative job back; the renderer's slots bound the CPU work.
        max_jobs = 2 * self.pool.size
        self.renderer = Renderer(d.assets, d.derivatives, d.registry, self.pool)
        self.bundle_handler = BundleHandler(d, self.renderer, max_jobs)
        self.runner = Runner(d.queue, d.db.url, [DerivativesHandler(self.renderer), self.bundle_handler], max_jobs)
        self.runner.start()

    async def drain(self, grace: float) -> None:
        if self.runner is not None:
            await self.runner.stop(grace)

    async def stop(self) -> None:
        if self.bundle_handler is not None:
            self.bundle_handler.close()
        await asyncio.to_thread(self.pool.shutdown)
        if self.renderer is not None:
            await self.renderer.drain_cleanups()


def base_roles(settings: Settings) -> list[Role]:
    """What every host runs first: tracing (if configured; flushed last), Postgres (if embedded), the domain,
    maintenance, the metrics endpoint (DERIVATIVES_METRICS_LISTEN; main() called core.metrics.prepare_multiprocess
    first)."""
    roles: list[Role] = [TracingRole()] if tracing_configured() else []
    if not settings.database_url:
        roles.append(EmbeddedPostgresRole(settings.data_path))
    metrics = [MetricsRole()] if settings.metrics_listen else []
    return [*roles, DomainRole(), MaintenanceRole(), *metrics]


def runner_roles(settings: Settings, workers: int) -> list[Role]:
    """The job runner, last: a server claims jobs only once it serves (its port bound, its buckets ensured).

    Made here, in main(), so its pool is spawned before the event loop and any gRPC thread.
    """
    return [RunnerRole(settings, workers)] if workers > 0 else []
