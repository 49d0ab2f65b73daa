"""Postgres: the embedded default server, the connection pool, migrations, named queries."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import select
import threading
import time
import warnings
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from core.errors import Unavailable
from core.pids import alive as process_alive
from core.records import Row

log = logging.getLogger("derivatives.database")

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
# Serializes migration runs of several processes starting at once.
_MIGRATION_LOCK = 7_263_511


def load_queries() -> dict[str, str]:
    text = resources.files("core").joinpath("sql/queries.sql").read_text()
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


QUERIES = load_queries()


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every numbered file, in order."""
    found = []
    for entry in resources.files("core").joinpath("sql/migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text()))
    return sorted(found)


class EmbeddedPostgres:
    """A private Postgres (the pgserver wheel) under `data_dir/pg`, stopped by `stop()`.

    pgserver keeps a list of the processes holding a handle (`.handle_pids.json`) and stops the
    server only when the last one lets go; a process killed with SIGKILL never lets go, so every
    later clean stop would leave the postmaster running. `start` drops the entries of dead
    processes first. `restart_if_dead` starts it again after it died (the owner's supervisor).
    """

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "pg"
        self.lock_path = data_dir / "derivatives.lock"
        self._lock_file: Any = None
        self._server: Any = None
        # A restart (the supervisor's thread) and a stop (shutdown) never run pg_ctl at once.
        self._lock = threading.Lock()

    def start(self) -> str:
        """Start (or join, after a crash) the data directory's Postgres; DataDirInUse if another host holds it."""
        pgserver = _pgserver()
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        self._forget_dead_handles(pgserver)
        self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        uri: str = self._server.get_uri()
        log.info("embedded postgres running in %s", self.pgdata)
        return uri

    def _lock_data_dir(self) -> None:
        """One host per data directory. pgserver would let a second server share this Postgres without a word
        (and, with filesystem storage, its files): an exclusive lock on `derivatives.lock`, held for the life of
        the process (the kernel releases it when the process dies, however it dies), refuses the second one."""
        if self._lock_file is not None:
            return
        handle = open(self.lock_path, "a+")  # held open until stop(): the lock lives as long as the file is open
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise DataDirInUse(self.lock_path.parent, holder) from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    def _forget_dead_handles(self, pgserver: Any) -> None:
        handles = self.pgdata / ".handle_pids.json"
        with pgserver.postgres_server.PostgresServer._lock:
            if not handles.exists():
                return
            pids = json.loads(handles.read_text())
            # Our own pid too, unless this process already holds a handle (pgserver would not add it again).
            mine = self.pgdata.resolve() in pgserver.postgres_server.PostgresServer._instances
            alive = [pid for pid in pids if process_alive(pid) and (pid != os.getpid() or mine)]
            if alive != pids:
                handles.write_text(json.dumps(alive))
                log.info("embedded postgres: forgot handles of dead processes %s", sorted(set(pids) - set(alive)))

    def running(self) -> bool:
        """Whether the postmaster lives (a zombie, dead but not yet reaped by its parent, does not)."""
        if self._server is None:
            return False
        process = self._server.get_postmaster_info().process
        try:
            return bool(process.is_running()) and process.status() != "zombie"
        except Exception:  # psutil.NoSuchProcess and friends: gone
            return False

    def restart_if_dead(self) -> bool:
        """Start the postmaster again if it died (True when it did); pgserver clears a stale postmaster.pid."""
        with self._lock:
            if self._server is None or self.running():
                return False
            with _pgserver().postgres_server.PostgresServer._lock:
                self._server.ensure_postgres_running()
        log.warning("embedded postgres had stopped; started it again (pid %s)", self._server.get_pid())
        return True

    def stop(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.cleanup()
                self._server = None
                log.info("embedded postgres stopped")
            if self._lock_file is not None:
                self._lock_file.close()  # releases the lock
                self._lock_file = None


class DataDirInUse(Exception):
    def __init__(self, data_dir: Path, holder: str) -> None:
        super().__init__(
            f"the data directory {data_dir} is in use by another derivatives server ({holder}): "
            "one server per DERIVATIVES_DATA_DIR (set DERIVATIVES_SERVER_PROCESSES for more processes)"
        )


def _pgserver() -> Any:
    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime dir at import; without XDG_RUNTIME_DIR it falls back
        # to /tmp/runtime-<uid> (fine) and warns on every start.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        import pgserver  # imported here: production with DATABASE_URL never needs it
    return pgserver


def _readable(conn: Conn) -> bool:
    try:
        return bool(select.select([conn.pgconn.socket], [], [], 0)[0])
    except (OSError, ValueError, psycopg.Error):
        return True  # no usable socket: let the real check decide


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` means Postgres could not be reached (not a bad query)."""
    return isinstance(exc, PoolTimeout | psycopg.OperationalError) and not isinstance(exc, psycopg.errors.QueryCanceled)


Conn = psycopg.AsyncConnection[Row]


# A connection back in the pool within this many seconds is handed out again without a check.
CHECK_IDLE_SECONDS = 1.0


class Database:
    """An async connection pool plus the named queries."""

    def __init__(self, url: str, *, max_size: int = 10, name: str = "derivatives") -> None:
        self.url = url
        # When each pooled connection was last returned (see _check).
        self._returned_at: weakref.WeakKeyDictionary[Conn, float] = weakref.WeakKeyDictionary()
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[Row]] = AsyncConnectionPool(
            url,
            connection_class=psycopg.AsyncConnection[Row],
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=5.0,
            kwargs={"row_factory": dict_row, "autocommit": True, "application_name": name},
            check=self._check,
        )

    async def _check(self, conn: Conn) -> None:
        """Check a connection before handing it out, if it sat idle or the server said something.

        A check is a round trip: doing it for every query doubled the cost of a one-query call. An
        idle pooled connection has nothing to read, so a readable socket means the server closed it
        or sent a FATAL notice (a restart, a terminated backend): then the real check runs and the
        pool replaces the connection, as it does for one idle longer than CHECK_IDLE_SECONDS.
        """
        idle = time.monotonic() - self._returned_at.get(conn, 0.0)
        if idle > CHECK_IDLE_SECONDS or _readable(conn):
            await AsyncConnectionPool.check_connection(conn)

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30.0)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Row]]:
        try:
            async with self.pool.connection() as conn:
                try:
                    yield conn
                finally:
                    self._returned_at[conn] = time.monotonic()
        except (PoolTimeout, psycopg.OperationalError) as exc:
            if is_unavailable(exc):
                raise Unavailable("database unavailable") from exc
            raise

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Row]]:
        async with self.connection() as conn, conn.transaction():
            yield conn

    async def fetchone(
        self, name: str, conn: psycopg.AsyncConnection[Row] | None = None, /, **params: Any
    ) -> Row | None:
        if conn is not None:
            cur = await conn.execute(QUERIES[name], params)
            return await cur.fetchone()
        async with self.connection() as own:
            cur = await own.execute(QUERIES[name], params)
            return await cur.fetchone()

    async def fetchall(
        self, name: str, conn: psycopg.AsyncConnection[Row] | None = None, /, **params: Any
    ) -> list[Row]:
        if conn is not None:
            cur = await conn.execute(QUERIES[name], params)
            return await cur.fetchall()
        async with self.connection() as own:
            cur = await own.execute(QUERIES[name], params)
            return await cur.fetchall()

    async def execute(self, name: str, conn: psycopg.AsyncConnection[Row] | None = None, /, **params: Any) -> None:
        if conn is not None:
            await conn.execute(QUERIES[name], params)
            return
        async with self.connection() as own:
            await own.execute(QUERIES[name], params)

    async def ping(self) -> None:
        async with self.connection() as conn:
            await conn.execute("SELECT 1")

    async def migrate(self) -> list[int]:
        """Apply pending migrations in order, in one transaction under an advisory lock; returns those applied."""
        applied: list[int] = []
        async with self.connection() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                cur = await conn.execute("SELECT version FROM schema_migrations")
                done = {row["version"] for row in await cur.fetchall()}
                for version, name, sql in migrations():
                    if version in done:
                        continue
                    await conn.execute(sql.encode())
                    await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
                    applied.append(version)
                    log.info("applied migration %04d_%s", version, name)
        return applied
