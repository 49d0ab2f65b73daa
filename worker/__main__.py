"""`python -m worker`: a standalone worker host. Needs DATABASE_URL and the servers' storage."""

from __future__ import annotations

import asyncio
import sys

from core import metrics
from core.config import settings_or_exit
from core.host import Host, registry_or_exit
from core.logs import configure_logging
from worker.host import base_roles, runner_roles


def main() -> None:
    settings = settings_or_exit()
    if not settings.database_url:
        print("a worker host needs DATABASE_URL (the server's embedded Postgres is private)", file=sys.stderr)
        raise SystemExit(2)
    configure_logging(settings.log_level, settings.log_format)
    registry = registry_or_exit(settings)
    if settings.metrics_listen:  # before any process is started: they all write to the host's metrics
        metrics.prepare_multiprocess()
    roles = [*base_roles(settings), *runner_roles(settings, max(1, settings.workers))]
    asyncio.run(Host(settings, registry, roles, name="derivatives-worker").run())


if __name__ == "__main__":
    main()
