"""The create_derivatives job: each asset of the payload, a few at a time, on the pool."""

from __future__ import annotations

import asyncio

from core.records import DerivativesPayload, Job, JobKind
from worker.job import JobContext
from worker.render import Renderer


class DerivativesHandler:
    kind = JobKind.CREATE_DERIVATIVES

    def __init__(self, renderer: Renderer) -> None:
        self.renderer = renderer

    async def run(self, ctx: JobContext) -> None:
        payload = ctx.job.payload
        assert isinstance(payload, DerivativesPayload)
        queue: asyncio.Queue[str] = asyncio.Queue()
        for asset_id in payload.asset_ids:
            queue.put_nowait(asset_id)

        async def consume() -> None:
            while not queue.empty() and not ctx.should_stop():
                asset_id = queue.get_nowait()
                failures = await self.renderer.derive(asset_id, payload.only, payload.exclude, payload.lazy)
                ctx.failures.extend(failures)
                ctx.done += 1  # counted here, before any await: concurrent consumers never lose one
                await ctx.report()

        # A TaskGroup: when one asset raises (storage away), its siblings are cancelled too.
        async with asyncio.TaskGroup() as group:
            for _ in range(min(2 * self.renderer.pool.size, queue.qsize()) or 1):
                group.create_task(consume())
        if ctx.complete:
            await ctx.report(force=True)

    async def failed(self, job: Job, worker_id: str | None, reason: str) -> None:
        """Nothing beyond the job itself records a failed derivatives job."""
