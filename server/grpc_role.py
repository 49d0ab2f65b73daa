"""The gRPC face of a host, as a role: DerivativeService, health, reflection, the progress hub."""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from core.config import Settings
from core.host import HostContext, Role
from core.progress import ProgressHub
from derivatives.v1 import derivatives_pb2
from server import metrics_interceptor, rpc_trace
from server.auth import Security
from server.health import HealthMonitor
from server.http_role import HttpRole
from server.ports import PortLock, PortLocked
from server.service import DerivativeService, add_to_server

log = logging.getLogger("derivatives.server")

# grpcio sets SO_REUSEPORT by default: a second server on the same port would start silently and take half
# the connections. Off: the second one fails to bind and says so. On only for the serving processes of one
# host (DERIVATIVES_SERVER_PROCESSES > 1), whose parent holds the port against other servers (server/processes.py).
NO_REUSEPORT = [("grpc.so_reuseport", 0)]
REUSEPORT = [("grpc.so_reuseport", 1)]
KEEPALIVE = [
    # Long-lived WatchProgress streams: ping idle connections, tolerate client pings.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]
# Calls grpc core has received but the server has not taken up yet (grpc.aio takes up one call per method every
# few event-loop turns). Past the soft limit core refuses new calls at random, past the hard limit all of them
# (defaults 1,000 and 3,000: 10,000 watchers opening at once lost ~7,000 streams). Each waiting call holds its
# headers and request in core's memory (a few KB) and waits instead of failing fast; core still drops one waiting
# longer than grpc.server_max_unrequested_time_in_server (30 s by default).
PENDING_CALLS = [("grpc.server.max_pending_requests", 10_000), ("grpc.server.max_pending_requests_hard_limit", 20_000)]


class GrpcRole:
    name = "grpc"

    def __init__(self, security: Security, *, reuse_port: bool = False) -> None:
        self.security = security  # planned before start-up (Security.plan): a refusal stops it early
        self.reuse_port = reuse_port  # one of several serving processes of a host: share the port
        self.server: grpc.aio.Server | None = None  # set once started
        self.monitor: HealthMonitor | None = None
        self.hub: ProgressHub | None = None
        self.lock: PortLock | None = None  # one derivatives server per port (server/ports.py)

    async def start(self, ctx: HostContext) -> None:
        domain, settings = ctx.domain, ctx.settings
        security = self.security
        server = grpc.aio.server(
            # The call's span around the rest; then its metrics, so that refusals are counted too.
            interceptors=[*rpc_trace.interceptors(), *metrics_interceptor.interceptors(), *security.interceptors()],
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                *KEEPALIVE,
                *PENDING_CALLS,
                *(REUSEPORT if self.reuse_port else NO_REUSEPORT),
            ],
        )
        add_to_server(DerivativeService(domain), server)  # WatchProgress sends pre-serialized bytes
        monitor = HealthMonitor(domain.db, domain.storage, domain.buckets, settings.health_interval_seconds)
        health_pb2_grpc.add_HealthServicer_to_server(monitor.servicer, server)
        if settings.reflection:
            reflection.enable_server_reflection(
                [
                    derivatives_pb2.DESCRIPTOR.services_by_name["DerivativeService"].full_name,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ],
                server,
            )
        try:
            if security.server_credentials is not None:
                port = server.add_secure_port(settings.listen, security.server_credentials)
            else:
                port = server.add_insecure_port(settings.listen)
        except RuntimeError:  # grpcio raises when the address is taken
            port = 0
        if port == 0:
            raise SystemExit(f"cannot listen on {settings.listen}: is another server running there?")
        if not self.reuse_port and not settings.listen.startswith(("unix:", "unix-abstract:")):
            try:  # a server of its own holds its port's lock (server/ports.py); children share their parent's
                self.lock = PortLock.take(port, settings.listen)
            except PortLocked as exc:
                raise SystemExit(str(exc)) from None
        await asyncio.to_thread(domain.assets.sweep_tmp)  # this process takes the uploads
        self.monitor = monitor
        await monitor.start()  # the first probe also creates the buckets
        self.hub = domain.hub
        domain.hub.start()
        await server.start()
        self.server = server
        log.info(
            "serving derivatives.v1.DerivativeService on %s (%s, %s; storage: %s)",
            settings.listen,
            "TLS" if security.server_credentials is not None else "plaintext",
            security.describe(),
            domain.storage.backend,
        )

    async def drain(self, grace: float) -> None:
        """Health goes NOT_SERVING, new calls are refused, in-flight calls get `grace` seconds."""
        if self.monitor is not None:
            await self.monitor.shutdown()
        if self.server is not None:
            await self.server.stop(grace)

    async def stop(self) -> None:
        if self.hub is not None:
            await self.hub.stop()
        if self.lock is not None:
            self.lock.release()


def serving_roles(settings: Settings, security: Security, *, reuse_port: bool = False) -> list[Role]:
    """What serves calls in one process: gRPC, and the HTTP face when it has a listen address. `reuse_port`: one
    of a host's serving processes (server/child.py), sharing the port its parent holds."""
    roles: list[Role] = [GrpcRole(security, reuse_port=reuse_port)]
    if settings.http_listen:
        roles.append(HttpRole(security, reuse_port=reuse_port))
    return roles
