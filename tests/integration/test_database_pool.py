"""The connection pool skips its round-trip check for a connection in use a moment ago, yet never hands
out one the server has closed."""

from __future__ import annotations

import asyncio

import psycopg

from core.database import Database
from tests.harness import Postgres


def test_a_terminated_backend_is_replaced_without_a_failed_call(postgres: Postgres) -> None:
    url = postgres.new_database("pool")

    async def scenario() -> list[int]:
        db = Database(url, max_size=1)  # one connection: the next call must get the same one back
        await db.open()
        try:
            async with db.connection() as conn:
                pid = conn.info.backend_pid
            with psycopg.connect(url, autocommit=True) as admin:  # what a restart or failover does to it
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            await asyncio.sleep(0.2)  # well within the 1 s in which a returned connection is not checked
            async with db.connection() as conn:  # no OperationalError: the closed socket was noticed
                row = await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchone()
                assert row is not None
                return [pid, row["pid"]]
        finally:
            await db.close()

    old, new = asyncio.run(scenario())
    assert old != new
