"""Building a bundle: every member's JPEG, in order, streamed into one object.

Sources are resolved on the event loop (a missing derivative is made on the pool, a
few members ahead of the writer); the PDF/ZIP bytes are produced and uploaded in a
thread, a chunk at a time, straight into storage: no temp file, no whole file in
memory. Progress is reported per member, then FINISHING while the upload completes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import Executor, Future
from contextlib import AbstractContextManager, contextmanager
from typing import Any, BinaryIO

from core.bundles import Bundles, MemberUnavailable, member_source, title_words
from core.config import Settings
from core.database import Database, Row
from core.definitions import Registry
from core.storage import ObjectMissing, ObjectStorage, chunk_stream, read_chunks
from worker.pdf_writer import NotAJpeg, Page, PdfStream
from worker.zip_writer import zip_stream

log = logging.getLogger("derivatives.bundle_build")

# Derives one asset's key; returns a failure reason or None (the runner's per-asset path).
DeriveFn = Callable[[str, str], Awaitable[str | None]]


# Opens member i's JPEG (looking its location up again if the object vanished meanwhile).
MemberFile = Callable[[int], AbstractContextManager[BinaryIO]]


class BuildAborted(Exception):
    """The lease was lost or the runner is stopping: stop writing, leave the job to the next owner."""


class PermanentFailure(Exception):
    """Retrying cannot help (a member cannot be rendered, the work changed)."""


class BundleBuild:
    def __init__(
        self,
        db: Database,
        storage: ObjectStorage,
        settings: Settings,
        registry: Registry,
        bundles: Bundles,
        derive: DeriveFn,
        prefetch: int,
        writers: Executor,
    ) -> None:
        self.db = db
        self.storage = storage
        self.settings = settings
        self.registry = registry
        self.bundles = bundles
        self.derive = derive
        self.prefetch = max(1, prefetch)
        self.writers = writers

    async def run(
        self,
        bundle_id: uuid.UUID,
        progress: Callable[[int, str], Coroutine[Any, Any, None]],
        should_stop: Callable[[], bool],
    ) -> dict[str, Any]:
        bundle = await self.bundles.get(bundle_id)
        kind = bundle["kind"]
        work, members, sum_ = await self.bundles.inputs(bundle["work_id"], kind)
        if sum_ != bundle["checksum"]:
            raise PermanentFailure("the work changed since this bundle was requested; request it again")
        if not members:
            raise PermanentFailure("the work has no members")
        loop = asyncio.get_running_loop()
        tasks: dict[int, asyncio.Task[tuple[str, str]]] = {}

        def schedule(i: int) -> asyncio.Task[tuple[str, str]]:
            for j in range(i, min(i + self.prefetch, len(members))):
                if j not in tasks:
                    tasks[j] = asyncio.ensure_future(self._location(j, members[j], kind))
            return tasks[i]

        async def location(i: int, fresh: bool) -> tuple[str, str]:
            if fresh:  # the object we were given vanished (a derivative replaced meanwhile): look again
                tasks.pop(i, None)
            task = schedule(i)
            tasks.pop(i - 1, None)
            return await task

        done_count = 0

        def member_done(n: int, stage: str = "running") -> None:
            nonlocal done_count
            done_count = n
            asyncio.run_coroutine_threadsafe(progress(n, stage), loop)

        def fetch(i: int, fresh: bool = False) -> tuple[str, str]:  # in the writer thread
            if should_stop():
                raise BuildAborted()
            future: Future[tuple[str, str]] = asyncio.run_coroutine_threadsafe(location(i, fresh), loop)
            return future.result()

        @contextmanager
        def member_file(i: int) -> Iterator[BinaryIO]:
            for attempt in range(3):
                bucket, key = fetch(i, fresh=attempt > 0)
                opened = self.storage.open(bucket, key)
                try:
                    fh = opened.__enter__()
                except ObjectMissing:
                    continue
                try:
                    yield fh
                finally:
                    opened.__exit__(None, None, None)
                return
            raise MemberUnavailable(f"member {i + 1} (asset {members[i]['asset_id']}): its JPEG kept vanishing")

        writer = self._pdf if kind == "pdf" else self._zip
        chunks = writer(work, members, member_file, member_done)
        stream, counter = chunk_stream(chunks)
        try:
            await loop.run_in_executor(
                self.writers,
                functools.partial(
                    self.storage.put,
                    bundle["bucket"],
                    bundle["object_key"],
                    stream,
                    length=-1,
                    content_type="application/pdf" if kind == "pdf" else "application/zip",
                ),
            )
        finally:
            for task in tasks.values():
                task.cancel()
        await progress(done_count, "finishing")
        return {"bundle_id": str(bundle_id), "size_bytes": counter.total}

    async def _location(self, i: int, member: Row, kind: str) -> tuple[str, str]:
        """(bucket, key) of member i's JPEG, making its derivative first if needed."""
        label = f"member {i + 1} (asset {member['asset_id']})"
        source = member_source(member, kind, self.registry, self.settings)
        if source is None:
            raise MemberUnavailable(f"{label}: no JPEG can be made from {member['content_type']}")
        if source.derivative_key is None:
            return member["bucket"], member["object_key"]
        key = source.derivative_key
        for _ in range(3):  # the original may be replaced meanwhile: then the build is stale anyway
            row = await self.db.fetchone("get_derivative", asset_id=member["asset_id"], key=key)
            if row is not None and row["original_sha512"] == member["sha512"]:
                return row["bucket"], row["object_key"]
            reason = await self.derive(member["asset_id"], key)
            if reason:
                raise MemberUnavailable(f"{label}: {reason}")
        raise MemberUnavailable(f"{label}: its original changed during the build")

    def _pdf(
        self, work: Row, members: list[Row], member_file: MemberFile, done: Callable[..., None]
    ) -> Iterator[bytes]:
        info = {
            "Title": work["title"],
            "Author": work["creator"] or self.settings.institution,
            "Subject": work["url"] or f"work {work['work_id']}",
            "Creator": self.settings.institution or "derivative service",
            "Producer": "derivative service (derivatives.v1)",
        }

        def pages() -> Iterator[Page]:
            for i, member in enumerate(members):
                with member_file(i) as fh:
                    data = fh.read()  # one page in memory at a time
                if i:
                    done(i)
                yield Page(data, f"Page {i + 1} ({member['asset_id']})")
            done(len(members), "finishing")

        try:
            yield from PdfStream(info, self.settings.pdf_dpi).write(pages())
        except NotAJpeg as exc:
            raise MemberUnavailable(f"a member's JPEG is unreadable: {exc}") from None

    def _zip(
        self, work: Row, members: list[Row], member_file: MemberFile, done: Callable[..., None]
    ) -> Iterator[bytes]:
        width = max(3, len(str(len(members))))
        words = title_words(work["title"])
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines = [
            self.settings.institution,
            work["title"],
            f"Work: {work['work_id']}" + (f" ({work['url']})" if work["url"] else ""),
            f"Creator: {work['creator']}" if work["creator"] else "",
            f"Pages: {len(members)}",
            f"Prepared on {now}",
        ]
        about = "\n".join(line for line in lines if line) + "\n"

        def entries() -> Iterator[tuple[str, Iterator[bytes]]]:
            for i, member in enumerate(members):
                name = f"{i + 1:0{width}d}-{words}_{work['work_id']}_{i + 1}_{member['asset_id']}.jpg"
                yield name, _chunks(member_file, i, functools.partial(done, i + 1))
            done(len(members), "finishing")

        return zip_stream(entries(), about, about)


def _chunks(member_file: MemberFile, i: int, finished: Callable[[], None]) -> Iterator[bytes]:
    with member_file(i) as fh:
        yield from read_chunks(fh)
    finished()
