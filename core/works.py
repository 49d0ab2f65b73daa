"""Works: a title and an ordered list of member assets."""

from __future__ import annotations

import psycopg

from core.bundles import StoredInputs
from core.database import Database
from core.errors import NotFound, Reason
from core.records import Work


class Works:
    def __init__(self, db: Database, stored_inputs: StoredInputs) -> None:
        self.db = db
        self.stored_inputs = stored_inputs

    async def put(self, work_id: str, title: str, member_asset_ids: list[str], creator: str, url: str) -> Work:
        try:
            async with self.db.transaction() as conn:
                existing = {
                    r["asset_id"]
                    for r in await self.db.fetchall("lock_member_assets", conn, asset_ids=list(set(member_asset_ids)))
                }
                missing = sorted(set(member_asset_ids) - existing)
                if missing:
                    shown = ", ".join(missing[:10]) + (" …" if len(missing) > 10 else "")
                    raise NotFound(f"member asset(s) not found: {shown}", Reason.ASSET_NOT_FOUND, asset_id=missing[0])
                work = await self.db.fetchone(
                    "upsert_work", conn, work_id=work_id, title=title, creator=creator, url=url
                )
                assert work is not None
                await self.db.execute("delete_work_members", conn, work_id=work_id)
                if member_asset_ids:
                    await self.db.execute("insert_work_members", conn, work_id=work_id, asset_ids=member_asset_ids)
                await self.stored_inputs.refresh(conn, work_id)  # under the work's row lock, in this transaction
        except psycopg.errors.ForeignKeyViolation:
            raise NotFound(
                "a member asset was deleted while the work was being saved", Reason.ASSET_NOT_FOUND
            ) from None
        return Work.from_row(work, member_asset_ids)

    async def get(self, work_id: str) -> Work:
        async with self.db.connection() as conn:
            row = await self.db.fetchone("get_work", conn, work_id=work_id)
            if row is None:
                raise NotFound(f"work {work_id!r} not found", Reason.WORK_NOT_FOUND, work_id=work_id)
            members = await self.db.fetchall("list_work_members", conn, work_id=work_id)
        return Work.from_row(row, [m["asset_id"] for m in members])

    async def recent(self, limit: int = 100) -> list[tuple[str, str]]:
        """(work_id, title) of the works changed most recently first."""
        return [(r["work_id"], r["title"]) for r in await self.db.fetchall("recent_works", limit=limit)]
