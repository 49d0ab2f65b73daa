"""Making assets' derivatives: read, plan, render on the pool, attach. Both job handlers use it.

Rendering runs in a pool process (worker/tasks.py), which uploads what it makes; the
results are attached here under the concurrency contract (core/derivatives.py). Per-key
failures are recorded on the asset, so GetAsset can say why a derivative is missing.

The bookkeeping around a render is batched, so that it stays a small part of the imaging
time (issue 11): asset rows are read many per query; a render's slot is freed when the
render ends, not when it is attached, so the pool always has the next asset queued and no
process waits for Postgres; finished renders are attached several per transaction, their
failures recorded in it, and the caller reports progress once per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from core import failpoints, metrics, tracing
from core.assets import Assets
from core.definitions import Definition, Registry
from core.derivatives import Derivatives, Failed, Made, Outcome
from core.plan import Plan, plan
from core.records import Asset, AssetFailure, FailureClass
from worker import tasks
from worker.job import PROGRESS_INTERVAL
from worker.pool import WorkerCrashed, WorkerPool

log = logging.getLogger("derivatives.render")


# Asset rows read in one query. A row may be read a few seconds before its render starts: an original replaced
# meanwhile is rendered from the row read (or, deleted from storage already, fails "missing"), and the attach
# discards those results all the same (its check is against the row locked then, core/derivatives.py).
READ_BATCH = 64
# Finished renders attached in one transaction: at most this many, gathered for at most as long as progress
# is written at most (one write per batch), while renders go on (the pool does not wait for it: a slot is
# freed when its render ends). The last renders of a call attach at once.
ATTACH_BATCH = 32
ATTACH_WAIT = PROGRESS_INTERVAL
DISCARDED = "original replaced while rendering; results discarded"


@dataclass(frozen=True)
class Batch:
    """Assets of a derive_many call now done (attached, discarded or failed): how many, and their failures."""

    done: int
    failures: tuple[AssetFailure, ...]


@dataclass(frozen=True)
class _Rendered:
    """One asset rendered (or with nothing to render), waiting to be attached; `asset` None: it was deleted."""

    asset_id: str
    asset: Asset | None
    results: tuple[Made | Failed, ...] = ()
    planned_failures: tuple[AssetFailure, ...] = ()

    def outcome(self) -> Outcome:
        assert self.asset is not None
        failed = (
            AssetFailure(self.asset_id, r.key, r.reason, r.failure_class) for r in self.results if isinstance(r, Failed)
        )
        made = tuple(r for r in self.results if isinstance(r, Made))
        return Outcome(self.asset_id, self.asset.sha512, made, (*self.planned_failures, *failed))


class Renderer:
    def __init__(self, assets: Assets, derivatives: Derivatives, registry: Registry, pool: WorkerPool) -> None:
        self.assets = assets
        self.derivatives = derivatives
        self.registry = registry
        self.pool = pool
        # Renders in flight across jobs: two per process, so each process has the next one queued.
        self.slots = asyncio.Semaphore(2 * pool.size)
        self._renders: set[asyncio.Future[list[Made | Failed]]] = set()
        self._cleanups: set[asyncio.Future[None]] = set()

    async def derive(
        self, asset_id: str, only: tuple[str, ...] = (), exclude: tuple[str, ...] = (), lazy: bool = False
    ) -> list[AssetFailure]:
        """Make one asset's derivatives (waiting for a slot); returns its failures.

        Storage or database outages propagate (the job is retried).
        """
        failures: list[AssetFailure] = []

        async def collect(batch: Batch) -> None:
            failures.extend(batch.failures)

        await self.derive_many((asset_id,), only, exclude, lazy, on_batch=collect)
        return failures

    async def derive_many(
        self,
        asset_ids: Sequence[str],
        only: tuple[str, ...] = (),
        exclude: tuple[str, ...] = (),
        lazy: bool = False,
        *,
        on_batch: Callable[[Batch], Awaitable[None]],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """Make the derivatives of each asset, calling `on_batch` as batches of them are done.

        Stops taking assets when `should_stop()` says so; those in flight are still attached. Storage
        or database outages propagate (the job is retried): renders in flight are cancelled, and
        uploads not attached yet are deleted.
        """
        run = _Run(self, only, exclude, lazy)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(run.feed(group, asset_ids, should_stop))
                group.create_task(run.attach(on_batch))
        except ExceptionGroup as raised:  # the first failure, as a single call would raise it (bundle builds)
            first: BaseException = raised
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        finally:
            run.discard_unattached()

    async def _read(self, asset_ids: Sequence[str], lazy: bool) -> tuple[dict[str, Asset], dict[str, set[str]]]:
        """The assets (those that exist), and for a lazy run the keys each has made of its current original."""
        assets = await self.assets.find_many(asset_ids)
        have = await self.derivatives.current_keys(assets.values()) if lazy and assets else {}
        return assets, have

    async def _attach(self, batch: list[_Rendered]) -> list[AssetFailure]:
        """Attach a batch of renders in one transaction; the failures of its assets."""
        outcomes = [r.outcome() for r in batch if r.asset is not None]
        attached = await self.derivatives.attach_many(outcomes)
        failures: list[AssetFailure] = []
        for outcome, derivatives in zip(outcomes, attached, strict=True):
            if derivatives is None:
                failures.append(AssetFailure(outcome.asset_id, "", DISCARDED, FailureClass.ORIGINAL_REPLACED))
            else:
                failures.extend(outcome.failures)
        for rendered in batch:
            if rendered.asset is None:
                log.info("asset %s was deleted before its derivatives were made", rendered.asset_id)
                failures.append(AssetFailure(rendered.asset_id, "", "asset was deleted", FailureClass.ASSET_DELETED))
        metrics.derivative_failures(f.failure_class for f in failures)
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
            return [Failed(d.key, str(exc), FailureClass.WORKER_CRASHED) for d in definitions]

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
        self._delete_later([r for r in future.result() if isinstance(r, Made)])

    def _delete_later(self, made: list[Made]) -> None:
        """Delete uploads that will not be attached, in the background (drain_cleanups waits for it)."""
        if not made:
            return
        task = asyncio.ensure_future(self.derivatives.delete_objects([m.location for m in made]))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def drain_cleanups(self) -> None:
        """After the pool has shut down: finish deleting uploads of cancelled renders."""
        await asyncio.gather(*self._renders, return_exceptions=True)
        await asyncio.sleep(0)  # let their done-callbacks schedule the deletions
        await asyncio.gather(*self._cleanups, return_exceptions=True)


class _Run:
    """One derive_many call: feeds the pool, and attaches what comes back in batches."""

    def __init__(self, renderer: Renderer, only: tuple[str, ...], exclude: tuple[str, ...], lazy: bool) -> None:
        self.renderer = renderer
        self.only, self.exclude, self.lazy = only, exclude, lazy
        self.finished: list[_Rendered] = []  # rendered, not yet taken by attach()
        self.wake = asyncio.Event()  # something finished, or feeding ended
        self.launched = 0  # assets that will reach `finished`
        self.fed = False  # no more will be launched

    def _finish(self, rendered: _Rendered) -> None:
        self.finished.append(rendered)
        self.wake.set()

    async def feed(self, group: asyncio.TaskGroup, asset_ids: Sequence[str], should_stop: Callable[[], bool]) -> None:
        """Read the assets a batch at a time and start each one's render as soon as a slot is free."""
        r = self.renderer
        try:
            for start in range(0, len(asset_ids), READ_BATCH):
                chunk = asset_ids[start : start + READ_BATCH]
                if should_stop():
                    return
                assets, have = await r._read(chunk, self.lazy)
                for asset_id in chunk:
                    if should_stop():
                        return
                    asset = assets.get(asset_id)
                    todo = plan(r.registry, asset, self.only, self.exclude, have.get(asset_id, ())) if asset else None
                    if asset is None or todo is None or not todo.make:
                        self.launched += 1
                        self._finish(_Rendered(asset_id, asset, (), todo.failures if todo else ()))
                        continue
                    await r.slots.acquire()
                    self.launched += 1
                    # Released by the task's done callback, which runs even for a task cancelled before its first
                    # step (a sibling's failure aborting the group): a `finally` inside it would never run, and the
                    # slot, shared by every job of the process, would be lost for good.
                    group.create_task(self._render(asset, todo)).add_done_callback(lambda _: r.slots.release())
        finally:
            self.fed = True
            self.wake.set()

    async def _render(self, asset: Asset, todo: Plan) -> None:
        # Its slot is released when this task ends (feed's done callback): the next asset goes to the pool then,
        # not after the attach.
        started = time.perf_counter()
        with tracing.asset_span(asset.asset_id):  # its log lines name the asset; a span when tracing is on
            results = await self.renderer._render_with_retry(asset, todo.make)
        metrics.asset_rendered(time.perf_counter() - started)
        self._finish(_Rendered(asset.asset_id, asset, tuple(results), todo.failures))

    def _complete(self, pending: int) -> bool:
        """Nothing more will finish beyond the `pending` taken or waiting."""
        return self.fed and pending == self.launched

    async def attach(self, on_batch: Callable[[Batch], Awaitable[None]]) -> None:
        """Attach finished renders in batches, until every launched one is attached."""
        loop = asyncio.get_running_loop()
        taken = 0
        while not self._complete(taken):
            if not self.finished:
                self.wake.clear()
                await self.wake.wait()
                continue
            # Gather for a moment: renders go on meanwhile, and one transaction serves several assets.
            deadline = loop.time() + ATTACH_WAIT
            while len(self.finished) < ATTACH_BATCH and not self._complete(taken + len(self.finished)):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), remaining)
            await failpoints.hold("derivatives_rendered")  # uploaded, not attached: a drill replaces an original here
            batch = self.finished[:ATTACH_BATCH]
            del self.finished[:ATTACH_BATCH]  # no await until attach_many has them: cancelled, they are discarded
            taken += len(batch)
            failures = await self.renderer._attach(batch)
            await on_batch(Batch(len(batch), tuple(failures)))

    def discard_unattached(self) -> None:
        """After a failure: uploads of renders that finished but were not attached are deleted."""
        made = [m for rendered in self.finished for m in rendered.results if isinstance(m, Made)]
        self.finished.clear()
        self.renderer._delete_later(made)
