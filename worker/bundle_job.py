"""The build_bundle job: build the bundle's file, then mark it built (core/bundles.py owns its state)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from core import tracing
from core.bundles import MemberUnavailable
from core.domain import Domain
from core.records import BundlePayload, Job, JobKind
from worker.bundle_build import BundleBuild, Tools
from worker.job import JobContext, PermanentFailure
from worker.render import Renderer


class BundleHandler:
    kind = JobKind.BUILD_BUNDLE

    def __init__(self, domain: Domain, renderer: Renderer, max_builds: int) -> None:
        self.bundles = domain.bundles
        # Bundle writers stream for minutes: their own threads, so they never starve asyncio.to_thread
        # (health probes, uploads), and at most max_builds of them run.
        self.writers = ThreadPoolExecutor(max_workers=max_builds, thread_name_prefix="bundle-writer")
        self.tools = Tools(
            storage=domain.storage,
            settings=domain.settings,
            registry=domain.registry,
            derivatives=domain.derivatives,
            renderer=renderer,
            writers=self.writers,
            prefetch=2 * renderer.pool.size,
        )

    async def run(self, ctx: JobContext) -> None:
        payload = ctx.job.payload
        assert isinstance(payload, BundlePayload)
        bundle = await self.bundles.get(payload.bundle_id)
        tracing.note(work=bundle.work_id)  # the rest of the job's log lines (and its span) name the work
        inputs = await self.bundles.inputs(bundle.work_id, bundle.kind)
        if inputs.checksum != bundle.checksum:
            raise PermanentFailure("the work changed since this bundle was requested; request it again")
        if not inputs.members:
            raise PermanentFailure("the work has no members")
        try:
            size = await BundleBuild(bundle, inputs, ctx, self.tools).run()
        except MemberUnavailable as exc:
            raise PermanentFailure(str(exc)) from None
        # Fenced: a builder that lost its lease (or whose bundle was restarted) changes nothing.
        await self.bundles.built(bundle.bundle_id, ctx.job_id, ctx.worker_id, size)
        ctx.done = ctx.job.total

    async def failed(self, job: Job, worker_id: str | None, reason: str) -> None:
        assert isinstance(job.payload, BundlePayload)
        await self.bundles.failed(job.payload.bundle_id, job.job_id, worker_id, reason)

    def close(self) -> None:
        self.writers.shutdown(wait=False, cancel_futures=True)
