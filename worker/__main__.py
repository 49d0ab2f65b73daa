"""`python -m worker`: a standalone worker host. Needs DATABASE_URL and the servers' storage."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from core.config import Settings, settings_or_exit
from core.database import Database
from core.definitions import load_registry
from core.storage import open_storage
from worker.pool import WorkerPool
from worker.runner import Runner

log = logging.getLogger("derivatives.worker")


async def run(settings: Settings, pool: WorkerPool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    db = Database(settings.database_url, max_size=settings.db_pool_size, name="derivatives-worker")
    await db.open()
    try:
        await db.migrate()
        runner = Runner(db, open_storage(settings), settings, load_registry(settings.definitions_file), pool)
        runner.start()
        await stop.wait()
        log.info("stopping: finishing in-flight work for up to %.0fs", settings.shutdown_grace_seconds)
        await runner.stop(settings.shutdown_grace_seconds)
        await asyncio.to_thread(pool.shutdown)
        await runner.drain_cleanups()
    finally:
        await db.close()


def main() -> None:
    settings = settings_or_exit()
    if not settings.database_url:
        print("a worker host needs DATABASE_URL (the server's embedded Postgres is private)", file=sys.stderr)
        raise SystemExit(2)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pool = WorkerPool(settings, max(1, settings.workers))
    pool.warm()
    asyncio.run(run(settings, pool))


if __name__ == "__main__":
    main()
