"""`python -m server`: serve with settings from the environment."""

from __future__ import annotations

import os

# We never fork with gRPC running (the pool is spawned); only pg_ctl subprocesses are started, and
# gRPC's fork handlers would just warn about them.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import asyncio

from core.config import settings_or_exit
from server.app import configure_logging, serve


def main() -> None:
    settings = settings_or_exit()
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
