"""Building a bundle: every member's JPEG, in order, streamed into one object.

Two sides meet in `BundleBuild`:
- on the event loop, each member's JPEG is located a few members ahead of the writer
  (a missing derivative is made on the pool first), and progress is reported;
- in a writer thread, the PDF/ZIP bytes are produced and uploaded a chunk at a time,
  straight into storage: no temp file, no whole file in memory.
The thread asks the loop for a member's location with `run_coroutine_threadsafe` and
tells it about finished members the same way. Progress is per member, then FINISHING.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import functools
import logging
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from core import failpoints
from core.bundles import Inputs, MemberUnavailable, member_source, title_words
from core.config import Settings
from core.definitions import Registry
from core.derivatives import Derivatives
from core.records import Bundle, BundleKind, Location, Member, Stage, Work
from core.storage import ObjectMissing, ObjectStorage, chunk_stream, read_chunks
from worker.job import Interrupted, JobContext
from worker.pdf_writer import NotAJpeg, Page, PdfStream
from worker.render import Renderer
from worker.zip_writer import zip_stream

log = logging.getLogger("derivatives.bundle_build")

# How often a member's JPEG may vanish under the writer (a derivative replaced meanwhile) before the build fails.
OPEN_ATTEMPTS = 3


@dataclass(frozen=True)
class Tools:
    """What every build uses: made once by the bundle handler."""

    storage: ObjectStorage
    settings: Settings
    registry: Registry
    derivatives: Derivatives
    renderer: Renderer
    # Threads that produce and upload the bytes.
    writers: Executor
    # Members located ahead of the writer.
    prefetch: int


class BundleBuild:
    """One build of one bundle: run() streams it into storage and returns its size in bytes."""

    def __init__(self, bundle: Bundle, inputs: Inputs, ctx: JobContext, tools: Tools) -> None:
        self.bundle = bundle
        self.work = inputs.work
        self.members = inputs.members
        self.ctx = ctx
        self.storage = tools.storage
        self.settings = tools.settings
        self.registry = tools.registry
        self.derivatives = tools.derivatives
        self.renderer = tools.renderer
        self.writers = tools.writers
        self.prefetch = max(1, tools.prefetch)
        self.loop = asyncio.get_running_loop()
        self._located: dict[int, asyncio.Task[Location]] = {}  # member index -> its JPEG, being looked up
        self._done = 0

    async def run(self) -> int:
        kind = self.bundle.kind
        stream, counter = chunk_stream(self._pdf() if kind is BundleKind.PDF else self._zip())
        put = functools.partial(
            self.storage.put,
            self.bundle.location.bucket,
            self.bundle.location.key,
            stream,
            length=-1,
            content_type=kind.content_type,
        )
        try:
            # In the job's context, as are the lookups it asks the loop for: their log lines and spans name the job.
            await self.loop.run_in_executor(self.writers, contextvars.copy_context().run, put)
        finally:
            for task in self._located.values():
                task.cancel()
        await self._report(self._done, Stage.FINISHING)
        return counter.total

    # --- the event loop's side ----------------------------------------------------------------

    async def _location(self, i: int, fresh: bool) -> Location:
        """Member i's JPEG, looking ahead `prefetch` members; `fresh` forgets an earlier answer."""
        if fresh:  # the object we were given vanished (a derivative replaced meanwhile): look again
            self._located.pop(i, None)
        for j in range(i, min(i + self.prefetch, len(self.members))):
            if j not in self._located:
                self._located[j] = asyncio.ensure_future(self._resolve(j))
        task = self._located[i]
        self._located.pop(i - 1, None)
        return await task

    async def _resolve(self, i: int) -> Location:
        """Where member i's JPEG is, making its derivative first if needed."""
        member = self.members[i]
        label = f"member {i + 1} (asset {member.asset_id})"
        source = member_source(member, self.bundle.kind, self.registry, self.settings)
        if source is None:
            raise MemberUnavailable(f"{label}: no JPEG can be made from {member.content_type}")
        if source.derivative_key is None:
            if source.proof_key is not None:  # the original as it is, once a derivative shows that it decodes
                await self._derivative(member, source.proof_key, label)
            return member.original
        return await self._derivative(member, source.derivative_key, label)

    async def _derivative(self, member: Member, key: str, label: str) -> Location:
        """The member's derivative `key` of its current original, made now if missing (the failure if it cannot be)."""
        for _ in range(3):  # the original may be replaced meanwhile: then the build is stale anyway
            derivative = await self.derivatives.get(member.asset_id, key)
            if derivative is not None and derivative.original_sha512 == member.sha512:
                return derivative.location
            failures = await self.renderer.derive(member.asset_id, only=(key,), lazy=True)
            if failures:
                raise MemberUnavailable(f"{label}: {failures[0].reason}")
        raise MemberUnavailable(f"{label}: its original changed during the build")

    async def _report(self, done: int, stage: Stage) -> None:
        self.ctx.done = max(self.ctx.done, done)  # in the writer thread's order; never backwards
        await self.ctx.report(stage)

    # --- the writer thread's side -------------------------------------------------------------

    def _locate(self, i: int, fresh: bool) -> Location:
        if self.ctx.should_stop():
            raise Interrupted()
        return asyncio.run_coroutine_threadsafe(self._location(i, fresh), self.loop).result()

    def _member_done(self, n: int, stage: Stage = Stage.RUNNING) -> None:
        self._done = n
        asyncio.run_coroutine_threadsafe(self._report(n, stage), self.loop)

    @contextmanager
    def _open_member(self, i: int) -> Iterator[BinaryIO]:
        """Member i's JPEG, open; looked up again if its object vanished before we opened it."""
        for attempt in range(OPEN_ATTEMPTS):
            location = self._locate(i, fresh=attempt > 0)
            with ExitStack() as stack:
                try:
                    fh = stack.enter_context(self.storage.open(location.bucket, location.key))
                except ObjectMissing:
                    continue
                yield fh
                return
        raise MemberUnavailable(f"member {i + 1} (asset {self.members[i].asset_id}): its JPEG kept vanishing")

    def _pages(self) -> Iterator[Page]:
        for i, member in enumerate(self.members):
            with self._open_member(i) as fh:
                data = fh.read()  # one page in memory at a time
            if i:
                self._member_done(i)
                failpoints.hit("bundle_member_written")
            yield Page(data, f"Page {i + 1} ({member.asset_id})")
        self._member_done(len(self.members), Stage.FINISHING)

    def _pdf(self) -> Iterator[bytes]:
        work, institution = self.work, self.settings.institution
        info = {
            "Title": work.title,
            "Author": work.creator or institution,
            "Subject": work.url or f"work {work.work_id}",
            "Creator": institution or "derivative service",
            "Producer": "derivative service (derivatives.v1)",
        }
        try:
            yield from PdfStream(info, self.settings.pdf_dpi).write(self._pages())
        except NotAJpeg as exc:
            raise MemberUnavailable(f"a member's JPEG is unreadable: {exc}") from None

    def _member_chunks(self, i: int) -> Iterator[bytes]:
        with self._open_member(i) as fh:
            yield from read_chunks(fh)
        self._member_done(i + 1)
        failpoints.hit("bundle_member_written")  # mid-stream: a partial upload, never completed

    def _entries(self) -> Iterator[tuple[str, Iterator[bytes]]]:
        work = self.work
        width = max(3, len(str(len(self.members))))
        words = title_words(work.title)
        for i, member in enumerate(self.members):
            name = f"{i + 1:0{width}d}-{words}_{work.work_id}_{i + 1}_{member.asset_id}.jpg"
            yield name, self._member_chunks(i)
        self._member_done(len(self.members), Stage.FINISHING)

    def _zip(self) -> Iterator[bytes]:
        about = about_text(self.work, len(self.members), self.settings.institution)
        return zip_stream(self._entries(), about, about)


def about_text(work: Work, pages: int, institution: str) -> str:
    """about.txt of a ZIP (also its comment)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        institution,
        work.title,
        f"Work: {work.work_id}" + (f" ({work.url})" if work.url else ""),
        f"Creator: {work.creator}" if work.creator else "",
        f"Pages: {pages}",
        f"Prepared on {now}",
    ]
    return "\n".join(line for line in lines if line) + "\n"
