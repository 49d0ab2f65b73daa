"""`python -m server`: serve with settings from the environment (`make run`)."""

from __future__ import annotations

import os

# We never fork with gRPC running (the pool is spawned); only pg_ctl subprocesses are started, and
# gRPC's fork handlers would just warn about them.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import asyncio

from core import metrics
from core.config import settings_or_exit
from core.host import Host, Role, registry_or_exit
from core.logs import configure_logging
from server.auth import Security
from server.grpc_role import serving_roles
from server.processes import ServingProcesses
from worker.host import base_roles, runner_roles


def main() -> None:
    settings = settings_or_exit()
    configure_logging(settings.log_level, settings.log_format)
    registry = registry_or_exit(settings)  # a bad file stops start-up, before anything runs
    security = Security.plan(settings)  # so does a bad tokens file, or no credentials off loopback
    if settings.metrics_listen:  # before any process is started: they all write to the host's metrics
        metrics.prepare_multiprocess()
    # The roles are made here, before the event loop: the runner's pool is spawned now.
    serving: list[Role]
    if settings.server_processes > 1:  # a parent: N children serve (server/processes.py), it owns the rest
        serving = [ServingProcesses(settings)]
    else:
        serving = serving_roles(settings, security)
    roles = [*base_roles(settings), *serving, *runner_roles(settings, settings.workers)]
    asyncio.run(Host(settings, registry, roles, name="derivatives-server").run())


if __name__ == "__main__":
    main()
