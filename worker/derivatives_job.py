"""The create_derivatives job: the assets of the payload on the pool, attached and reported in batches."""

from __future__ import annotations

from core.records import DerivativesPayload, Job, JobKind
from worker.job import JobContext
from worker.render import Batch, Renderer


class DerivativesHandler:
    kind = JobKind.CREATE_DERIVATIVES

    def __init__(self, renderer: Renderer) -> None:
        self.renderer = renderer

    async def run(self, ctx: JobContext) -> None:
        payload = ctx.job.payload
        assert isinstance(payload, DerivativesPayload)

        async def done(batch: Batch) -> None:
            ctx.failures.extend(batch.failures)
            ctx.done += batch.done  # counted before any await: a progress write never misses one
            await ctx.report()  # from the batch: written at most every PROGRESS_INTERVAL

        await self.renderer.derive_many(
            payload.asset_ids, payload.only, payload.exclude, payload.lazy, on_batch=done, should_stop=ctx.should_stop
        )
        if not payload.asset_ids:  # otherwise the last batch's report wrote the complete state
            await ctx.report(force=True)

    async def failed(self, job: Job, worker_id: str | None, reason: str) -> None:
        """Nothing beyond the job itself records a failed derivatives job."""
