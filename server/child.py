"""`python -m server.child`: one of a host's serving processes, started by its parent (server/processes.py).

It serves gRPC and the HTTP face on the port its parent holds (SO_REUSEPORT), with its own progress hub,
on the parent's Postgres (DATABASE_URL in its environment). It runs no jobs and no maintenance: those are the
parent's, once per host. It writes one byte to `--ready-fd` once it serves, and stops when its parent dies.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # as server/__main__.py

import argparse
import asyncio

from core.config import settings_or_exit
from core.host import DomainRole, Host, Role, registry_or_exit
from core.logs import configure_logging
from core.tracing import TracingRole
from core.tracing import configured as tracing_configured
from server.auth import Security
from server.grpc_role import serving_roles

PARENT_CHECK_SECONDS = 1.0
ORPHAN_GRACE_SECONDS = 1.0  # in-flight calls get this long when the parent is gone (its restart wants the port)
ORPHAN_STOP_SECONDS = 5.0  # and the rest of the shutdown this long, before the process exits regardless


async def _serve(host: Host, ready_fd: int, parent: int) -> None:
    ready = asyncio.Event()

    async def tell_parent() -> None:
        await ready.wait()
        os.write(ready_fd, b"1")
        os.close(ready_fd)

    async def watch_parent() -> None:
        while os.getppid() == parent:  # noqa: ASYNC110  (nothing to wait on: the parent is re-parented away)
            await asyncio.sleep(PARENT_CHECK_SECONDS)
        # The parent died (SIGKILL): nobody would stop us, and the port must be freed soon, for a new parent.
        host.stop(grace=ORPHAN_GRACE_SECONDS)
        # A shutdown already under way (the parent was stopping) keeps its own, longer, grace: cut it short.
        await asyncio.sleep(ORPHAN_GRACE_SECONDS + ORPHAN_STOP_SECONDS)
        os._exit(1)

    tasks = [asyncio.create_task(tell_parent()), asyncio.create_task(watch_parent())]
    try:
        await host.run(ready)
    finally:
        for task in tasks:
            task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    args = parser.parse_args()
    settings = settings_or_exit()
    configure_logging(settings.log_level, settings.log_format, process=f"server-{args.index}")
    registry = registry_or_exit(settings)
    security = Security.plan(settings)
    # Tracing first (its RPC interceptor is added only if it is on when gRPC starts), flushed last.
    roles: list[Role] = [TracingRole()] if tracing_configured() else []
    roles += [DomainRole(), *serving_roles(settings, security, reuse_port=True)]
    host = Host(settings, registry, roles, name=f"derivatives-server-{args.index}")
    asyncio.run(_serve(host, args.ready_fd, args.parent))


if __name__ == "__main__":
    main()
