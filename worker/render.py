"""Making one asset's derivatives: plan, render on the pool, attach. Both job handlers use it.

Rendering runs in a pool process (worker/tasks.py), which uploads what it makes; the
results are attached here under the concurrency contract (core/derivatives.py). Per-key
failures are recorded on the asset, so GetAsset can say why a derivative is missing.
"""

from __future__ import annotations

import asyncio
import logging

from core.assets import Assets
from core.definitions import Definition, Registry
from core.derivatives import Derivatives, Failed, Made
from core.plan import plan
from core.records import Asset, AssetFailure
from worker import tasks
from worker.pool import WorkerCrashed, WorkerPool

log = logging.getLogger("derivatives.render")


class Renderer:
    def __init__(self, assets: Assets, derivatives: Derivatives, registry: Registry, pool: WorkerPool) -> None:
        self.assets = assets
        self.derivatives = derivatives
        self.registry = registry
        self.pool = pool
        # Assets in flight across jobs: two per process, so while one asset's results are attached in
        # Postgres (no CPU), the next is already rendering.
        self.slots = asyncio.Semaphore(2 * pool.size)
        self._renders: set[asyncio.Future[list[Made | Failed]]] = set()
        self._cleanups: set[asyncio.Future[None]] = set()

    async def derive(
        self, asset_id: str, only: tuple[str, ...] = (), exclude: tuple[str, ...] = (), lazy: bool = False
    ) -> list[AssetFailure]:
        """Make one asset's derivatives (waiting for a slot); returns its failures.

        Storage or database outages propagate (the job is retried).
        """
        async with self.slots:
            return await self._derive(asset_id, only, exclude, lazy)

    async def _derive(
        self, asset_id: str, only: tuple[str, ...], exclude: tuple[str, ...], lazy: bool
    ) -> list[AssetFailure]:
        asset = await self.assets.find(asset_id)
        if asset is None:
            log.info("asset %s was deleted before its derivatives were made", asset_id)
            return [AssetFailure(asset_id, "", "asset was deleted")]
        have: list[str] = []
        if lazy:
            have = [d.key for d in await self.derivatives.of_asset(asset_id) if d.original_sha512 == asset.sha512]
        todo = plan(self.registry, asset, only, exclude, have)
        results = await self._render_with_retry(asset, todo.make) if todo.make else []
        made = [r for r in results if isinstance(r, Made)]
        if made and await self.derivatives.attach(asset_id, asset.sha512, made) is None:
            return [AssetFailure(asset_id, "", "original replaced while rendering; results discarded")]
        failures = [
            *todo.failures,
            *(AssetFailure(asset_id, r.key, r.reason) for r in results if isinstance(r, Failed)),
        ]
        await self.derivatives.record_failures(asset, failures)
        return failures

    async def _render_with_retry(self, asset: Asset, definitions: tuple[Definition, ...]) -> list[Made | Failed]:
        """A crashed pool process fails every task it had in flight, most of them innocent: try again
        once on the new pool, and record the crash only if this original crashes it again."""
        try:
            return await self._render(asset, definitions)
        except WorkerCrashed:
            log.warning("asset %s: worker process died; rendering it again", asset.asset_id)
        try:
            return await self._render(asset, definitions)
        except WorkerCrashed as exc:
            return [Failed(d.key, str(exc)) for d in definitions]

    async def _render(self, asset: Asset, definitions: tuple[Definition, ...]) -> list[Made | Failed]:
        """Run the pool task; if we are cancelled meanwhile, delete what it uploads once it ends."""
        future = asyncio.ensure_future(self.pool.run(tasks.make_derivatives, asset, definitions))
        self._renders.add(future)
        future.add_done_callback(self._renders.discard)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(self._discard_uploads)
            raise

    def _discard_uploads(self, future: asyncio.Future[list[Made | Failed]]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        locations = [r.location for r in future.result() if isinstance(r, Made)]
        task = asyncio.ensure_future(self.derivatives.delete_objects(locations))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def drain_cleanups(self) -> None:
        """After the pool has shut down: finish deleting uploads of cancelled renders."""
        await asyncio.gather(*self._renders, return_exceptions=True)
        await asyncio.sleep(0)  # let their done-callbacks schedule the deletions
        await asyncio.gather(*self._cleanups, return_exceptions=True)
