"""Periodic maintenance, as a role: the bundle cache reaper, forgetting old jobs, and the storage sweep.

Safe in any number of processes at once (every round uses SKIP LOCKED or deletes
idempotently; the storage sweep runs in one process at a time, under an advisory lock);
`python -m server` and `python -m worker` both run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math

from core.domain import Domain
from core.errors import FailedPrecondition
from core.host import HostContext

log = logging.getLogger("derivatives.maintenance")


async def sweep(domain: Domain) -> None:
    """One round: reap idle and over-budget bundles, prune jobs finished long ago, and store the
    bundle inputs of works that have none under this configuration (a batch a round)."""
    await domain.bundles.reap()
    await domain.queue.prune()
    await domain.bundles.stored_inputs.backfill()


async def install_bundle_expiry(domain: Domain) -> None:
    """On S3, a lifecycle rule on the bundle bucket backs up the reaper (it counts from creation, not access)."""
    settings, storage = domain.settings, domain.storage
    if storage.backend != "s3":
        return
    if settings.bucket_bundles in (settings.bucket_originals, settings.bucket_derivatives):
        log.warning("bundle bucket is shared with other data: no lifecycle expiry installed")
        return
    days = max(1, math.ceil(settings.bundle_idle_seconds / 86400)) + 1
    try:
        await asyncio.to_thread(storage.ensure_buckets, (settings.bucket_bundles,))
        await asyncio.to_thread(storage.expire_after, settings.bucket_bundles, days)
        log.info("bundle bucket %s: objects expire %d days after creation (backstop)", settings.bucket_bundles, days)
    except Exception as exc:
        log.warning("could not install the bundle bucket lifecycle rule: %s", exc)


class MaintenanceRole:
    name = "maintenance"

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, ctx: HostContext) -> None:
        domain = ctx.domain
        await install_bundle_expiry(domain)
        try:  # the buckets are this database's from its first contact (the sweep checks it each time)
            foreign = await domain.reclaimer.claim_buckets()
            if foreign:
                log.error("buckets %s belong to another installation: the storage sweep will not run", foreign)
        except Exception as exc:  # storage away at start-up: the sweep claims them later
            log.warning("could not mark the buckets as this installation's: %s", exc)
        self._tasks = [asyncio.create_task(self._loop(domain), name="maintenance")]
        if domain.settings.gc_interval_seconds > 0:
            self._tasks.append(asyncio.create_task(self._sweep_loop(domain), name="storage-sweep"))

    async def _loop(self, domain: Domain) -> None:
        while True:
            try:
                await sweep(domain)
            except Exception as exc:  # the database or storage is away: next round
                log.warning("maintenance: %s", exc)
            await asyncio.sleep(domain.settings.bundle_reap_interval_seconds)

    async def _sweep_loop(self, domain: Domain) -> None:
        """The storage sweep, every interval (the first one interval after start-up)."""
        while True:
            await asyncio.sleep(domain.settings.gc_interval_seconds)
            try:
                async for _report in domain.reclaimer.sweep():
                    pass  # each bucket's report is logged by the sweep
            except FailedPrecondition:
                log.info("storage sweep: another process is sweeping")
            except Exception as exc:  # the database or storage is away: next round
                log.warning("storage sweep: %s", exc)

    async def drain(self, grace: float) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop(self) -> None:
        pass
