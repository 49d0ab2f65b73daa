"""Two batches attached at once, each having made something for one asset and failed a key of the other, never
deadlock: every asset a batch writes is locked first, in asset_id order (core/derivatives.py attach_many).

The failpoint holds each transaction just before it records failures until the test lets them go: it waits until
both batches are in place (both held there, or one held and the other waiting for a lock), so without that order
each would hold one asset's row and wait for the other's: Postgres would end one with a deadlock error (and the job
would be retried).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import psycopg
import pytest

from core.database import Database
from core.derivatives import Derivatives, Outcome
from core.failpoints import ENV as FAILPOINTS
from core.queue import PostgresQueue
from core.records import AssetFailure
from core.storage import FileStorage
from tests.harness import Postgres
from tests.integration.test_batch_attach import BUCKET, insert_asset, sha, upload


async def both_in_place(url: str) -> None:
    """Until both transactions are where the race is: two held at the failpoint (idle in a transaction), or one
    held there and one waiting for a row lock (the lock order at work)."""
    query = (
        "SELECT state, wait_event_type FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for _ in range(3000):  # 60 s at most
            rows = await (await conn.execute(query)).fetchall()
            held = sum(state == "idle in transaction" for state, _ in rows)
            waiting = sum(wait == "Lock" for _, wait in rows)
            if held == 2 or (held == 1 and waiting == 1):
                return
            await asyncio.sleep(0.02)
    raise AssertionError("the two batches never met")


def test_overlapping_batches_do_not_deadlock(
    postgres: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FileStorage(tmp_path / "storage")
    storage.ensure_buckets((BUCKET, "originals"))
    a, b = (f"overlap-{name}-{uuid.uuid4().hex[:6]}" for name in "ab")
    release = tmp_path / "release"
    monkeypatch.setenv(FAILPOINTS, f"failures_recorded?{release}")

    async def scenario() -> None:
        db = Database(postgres.new_database("overlap"), max_size=4)
        await db.open()
        try:
            await db.migrate()
            derivatives = Derivatives(db, storage, PostgresQueue(db), BUCKET)
            for asset_id in (a, b):
                await insert_asset(db, asset_id, sha(1))
            one = [
                Outcome(a, sha(1), (upload(storage, a, "thumb_mini"),)),
                Outcome(b, sha(1), (), (AssetFailure(b, "download_large", "decoder said no"),)),
            ]
            two = [
                Outcome(b, sha(1), (upload(storage, b, "thumb_mini"),)),
                Outcome(a, sha(1), (), (AssetFailure(a, "download_large", "decoder said no"),)),
            ]
            attaching = asyncio.gather(derivatives.attach_many(one), derivatives.attach_many(two))
            await both_in_place(db.url)
            release.touch()
            first, second = await attaching
            assert first[0] is not None and second[0] is not None
            assert {d.key for d in await derivatives.of_asset(a)} == {"thumb_mini"}
            assert {d.key for d in await derivatives.of_asset(b)} == {"thumb_mini"}
            rows = await db.fetchall("get_assets", asset_ids=[a, b])
            assert all(set(r["derivative_failures"]) == {"download_large"} for r in rows)
        finally:
            await db.close()

    asyncio.run(scenario())
