from __future__ import annotations

from core.database import QUERIES, migrations


def test_named_queries_load() -> None:
    assert {"get_asset", "insert_asset", "claim_job", "upsert_derivatives"} <= set(QUERIES)
    assert all(sql and "-- name:" not in sql for sql in QUERIES.values())


def test_migrations_are_numbered_without_gaps() -> None:
    versions = [v for v, _, _ in migrations()]
    assert versions == list(range(1, len(versions) + 1))
