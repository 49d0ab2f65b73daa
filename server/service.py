"""DerivativeService handlers: validate the request, delegate to one domain module, convert."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from google.protobuf import empty_pb2

from core.domain import Domain
from core.errors import InvalidArgument, Reason
from core.ids import CALLER_ID, SHA512_HEX, check_caller_id, check_caller_ids, check_key, check_text, require_uuid
from core.lru import ExpiringLRU
from core.media import SizeLimit, Spooled, spool_async, spool_stream
from core.reclaim import BucketReport
from core.records import AssetView, Bundle
from core.singleflight import SingleFlight
from core.storage import read_object
from derivatives.v1 import derivatives_pb2 as pb
from derivatives.v1 import derivatives_pb2_grpc as pb_grpc
from server import convert
from server.auth import current_principal
from server.rpc_trace import name_request
from server.status import field_paths, streaming, unary

log = logging.getLogger("derivatives.service")
MAX_PAGE = 10_000
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
# The request paths of the domain's fields, for the streamed uploads' header-then-chunks messages.
UPLOAD_FIELDS = {"content_type": "header.content_type"}
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DerivativeService"].full_name


class DerivativeService(pb_grpc.DerivativeServiceServicer):
    def __init__(self, domain: Domain) -> None:
        self.d = domain
        self.derivative_messages = convert.DerivativeMessages(domain.urls)
        # Watchers of one target ask for the same rows at once: one query serves them all.
        self._reads: SingleFlight[Any] = SingleFlight()
        # A bundle's final event (its signed URL) is reused for a tenth of the URL's lifetime, 5 s at most.
        self.progress_messages = convert.ProgressMessages(bundle_ttl=min(5.0, domain.settings.url_expiry_seconds / 10))
        # A bundle's job, for its watchers: it changes only when a bundle whose job ended is rebuilt (and a bundle
        # goes only once built), so it is not read again while the hub follows that job live.
        self._bundle_jobs: ExpiringLRU[uuid.UUID, uuid.UUID] = ExpiringLRU(10_000)

    def _asset(self, view: AssetView) -> pb.Asset:
        return convert.asset(view, self.derivative_messages)

    # --- assets -------------------------------------------------------------------------------

    @unary
    @field_paths({"location": "storage_ref"})
    async def PutAsset(self, request: pb.PutAssetRequest, context: Context) -> pb.Asset:
        violations: list[tuple[str, str]] = []
        check_caller_id(request.asset_id, "asset_id", violations)
        check_text(request.filename, "filename", violations)
        source = request.WhichOneof("source")
        if source is None:
            violations.append(("source", "set `data` or `storage_ref`"))
        if violations:
            raise InvalidArgument(violations)
        spooled: Spooled
        if source == "data":
            path = self.d.assets.temp_path()
            limit = self.d.assets.original_limit("data")
            spooled = await asyncio.to_thread(spool_stream, [request.data], path, limit)
        else:
            ref = request.storage_ref
            spooled = await self.d.assets.spool_from_storage(ref.bucket, ref.key)
        view = await self.d.assets.put(
            request.asset_id,
            request.content_type,
            spooled,
            filename=request.filename,
            skip_derivatives=request.skip_derivatives,
            owner=current_principal(),
        )
        return self._asset(view)

    @unary
    @field_paths(UPLOAD_FIELDS)
    async def UploadOriginal(
        self, request_iterator: AsyncIterator[pb.UploadOriginalRequest], context: Context
    ) -> pb.Asset:
        header, chunks = await _header_and_chunks(request_iterator)
        violations: list[tuple[str, str]] = []
        check_caller_id(header.asset_id, "header.asset_id", violations)
        check_text(header.filename, "header.filename", violations)
        if header.expected_sha512 and not SHA512_HEX.fullmatch(header.expected_sha512):
            violations.append(("header.expected_sha512", "must be 128 lowercase hex digits"))
        if violations:
            raise InvalidArgument(violations)

        spooled = await spool_async(chunks, self.d.assets.temp_path(), self.d.assets.original_limit("chunk"))
        if header.expected_sha512 and spooled.sha512 != header.expected_sha512:
            spooled.path.unlink(missing_ok=True)
            raise InvalidArgument.one(
                "header.expected_sha512", f"the received bytes have sha512 {spooled.sha512}", Reason.CHECKSUM_MISMATCH
            )
        view = await self.d.assets.put(
            header.asset_id,
            header.content_type,
            spooled,
            filename=header.filename,
            skip_derivatives=header.skip_derivatives,
            owner=current_principal(),
        )
        return self._asset(view)

    @unary
    async def GetAsset(self, request: pb.GetAssetRequest, context: Context) -> pb.Asset:
        check = _ids(asset_id=request.asset_id)
        return self._asset(await self.d.assets.get(check["asset_id"]))

    @unary
    async def ListAssets(self, request: pb.ListAssetsRequest, context: Context) -> pb.ListAssetsResponse:
        violations: list[tuple[str, str]] = []
        if not 0 <= request.page_size <= MAX_PAGE:
            violations.append(("page_size", f"must be 0-{MAX_PAGE}"))
        after = ""
        if request.page_token:
            try:
                after = base64.urlsafe_b64decode(request.page_token.encode()).decode()
            except (ValueError, UnicodeDecodeError):
                after = "\x00"
            if not CALLER_ID.fullmatch(after):
                violations.append(("page_token", "not a token from a previous page"))
        if violations:
            raise InvalidArgument(violations)
        size = request.page_size or 1000
        ids = await self.d.assets.list_ids(after, size + 1)
        token = base64.urlsafe_b64encode(ids[size - 1].encode()).decode() if len(ids) > size else ""
        return pb.ListAssetsResponse(asset_ids=ids[:size], next_page_token=token)

    @unary
    async def DeleteAsset(self, request: pb.DeleteAssetRequest, context: Context) -> empty_pb2.Empty:
        await self.d.assets.delete(_ids(asset_id=request.asset_id)["asset_id"])
        return empty_pb2.Empty()

    # --- works --------------------------------------------------------------------------------

    @unary
    async def PutWork(self, request: pb.PutWorkRequest, context: Context) -> pb.Work:
        violations: list[tuple[str, str]] = []
        check_caller_id(request.work_id, "work_id", violations)
        if not request.title.strip():
            violations.append(("title", "required"))
        for name in ("title", "creator", "url"):
            check_text(getattr(request, name), name, violations)
        if len(request.member_asset_ids) > self.d.settings.max_work_members:
            violations.append(("member_asset_ids", f"at most {self.d.settings.max_work_members:,} members"))
        check_caller_ids(list(request.member_asset_ids), "member_asset_ids", violations)
        if violations:
            raise InvalidArgument(violations)
        view = await self.d.works.put(
            request.work_id, request.title, list(request.member_asset_ids), request.creator, request.url
        )
        return convert.work(view)

    @unary
    async def GetWork(self, request: pb.GetWorkRequest, context: Context) -> pb.Work:
        return convert.work(await self.d.works.get(_ids(work_id=request.work_id)["work_id"]))

    # --- derivatives and jobs -----------------------------------------------------------------

    @unary
    async def ListDerivativeDefinitions(
        self, request: pb.ListDerivativeDefinitionsRequest, context: Context
    ) -> pb.ListDerivativeDefinitionsResponse:
        bucket = self.d.settings.bucket_derivatives
        return pb.ListDerivativeDefinitionsResponse(
            definitions=[convert.definition(d, bucket) for d in self.d.registry.sorted_definitions()]
        )

    @unary
    async def CreateDerivatives(self, request: pb.CreateDerivativesRequest, context: Context) -> pb.Job:
        violations: list[tuple[str, str]] = []
        if not request.asset_ids:
            violations.append(("asset_ids", "at least one asset"))
        elif len(request.asset_ids) > self.d.settings.max_job_assets:
            violations.append(("asset_ids", f"at most {self.d.settings.max_job_assets:,} per job"))
        if len(request.only) + len(request.exclude) > self.d.settings.max_request_keys:
            violations.append(("only", f"at most {self.d.settings.max_request_keys} keys in only and exclude together"))
        check_caller_ids(list(request.asset_ids), "asset_ids", violations)
        if violations:
            raise InvalidArgument(violations)
        self.d.registry.check_keys(list(request.only), list(request.exclude))
        job = await self.d.derivatives.request(
            request.asset_ids, request.only, request.exclude, request.lazy, owner=current_principal()
        )
        return convert.job(job)

    @unary
    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> pb.Job:
        return convert.job(await self.d.queue.get(require_uuid(request.job_id, "job_id")))

    @unary
    @field_paths(UPLOAD_FIELDS)
    async def UpdateDerivative(
        self, request_iterator: AsyncIterator[pb.UpdateDerivativeRequest], context: Context
    ) -> pb.Derivative:
        header, chunks = await _header_and_chunks(request_iterator)
        violations: list[tuple[str, str]] = []
        check_caller_id(header.asset_id, "header.asset_id", violations)
        check_key(header.key, "header.key", violations)
        if len(header.metadata) > 64:
            violations.append(("header.metadata", "at most 64 entries"))
        for name, value in header.metadata.items():
            check_text(name, "header.metadata", violations, limit=256)
            check_text(value, f"header.metadata[{name[:40]}]", violations)
        sha = header.expected_original_sha512
        if sha and not SHA512_HEX.fullmatch(sha):
            violations.append(("header.expected_original_sha512", "must be 128 lowercase hex digits"))
        if violations:
            raise InvalidArgument(violations)

        limit = SizeLimit(self.d.settings.max_derivative_bytes, "chunk", Reason.DERIVATIVE_TOO_LARGE)
        spooled = await spool_async(chunks, self.d.assets.temp_path(), limit)
        derivative = await self.d.derivatives.update(
            header.asset_id, header.key, header.content_type, spooled, dict(header.metadata), sha
        )
        return self.derivative_messages.get(derivative)

    @unary
    async def RemoveDerivative(self, request: pb.RemoveDerivativeRequest, context: Context) -> empty_pb2.Empty:
        violations: list[tuple[str, str]] = []
        check_caller_id(request.asset_id, "asset_id", violations)
        check_key(request.key, "key", violations)
        if violations:
            raise InvalidArgument(violations)
        await self.d.derivatives.remove(request.asset_id, request.key)
        return empty_pb2.Empty()

    # --- progress -----------------------------------------------------------------------------

    @streaming
    async def WatchProgress(  # type: ignore[override]  # bytes, not messages: see add_to_server
        self, request: pb.WatchProgressRequest, context: Context
    ) -> AsyncIterator[bytes]:
        """Yields serialized ProgressEvents (registered with a pass-through serializer, see `add_to_server`):
        every watcher of a job gets the same bytes for the same update, serialized once."""
        target = request.WhichOneof("target")
        if target is None:
            raise InvalidArgument.one("target", "set exactly one of job_id or bundle_id")
        if request.after_seq < 0:
            raise InvalidArgument.one("after_seq", "must be >= 0")
        bundle_id = None
        if target == "job_id":
            job_id = require_uuid(request.job_id, "job_id")
        else:
            bundle_id = require_uuid(request.bundle_id, "bundle_id")
            known = self._bundle_jobs.get(bundle_id)
            job_id = known if known is not None and self.d.hub.following(known) else await self._job_of(bundle_id)
        messages = self.progress_messages
        # Closed here, at once, however the loop ends (a reaped bundle's NotFound): the hub counts its watchers.
        async with contextlib.aclosing(self.d.hub.watch(job_id, request.after_seq)) as updates:
            async for update in updates:
                # A bundle's watcher wants the bundle on the final event: its URL, size, name.
                if not update.final or bundle_id is None:
                    yield messages.of(update)
                    continue
                data = messages.get(update, bundle_id)
                if data is None:
                    final_bundle = await self._final_bundle(bundle_id, update.event.seq)
                    # The first watcher back from the shared read encodes it, the others find it.
                    data = messages.get(update, bundle_id) or messages.encode(update, bundle_id, final_bundle)
                yield data

    async def _job_of(self, bundle_id: uuid.UUID) -> uuid.UUID:
        """The bundle's job, read once for the watchers asking at once, and kept for the next ones."""
        job_id: uuid.UUID = await self._reads.do(("job of", bundle_id), lambda: self.d.bundles.job_of(bundle_id))
        self._bundle_jobs.put(bundle_id, job_id)
        return job_id

    async def _final_bundle(self, bundle_id: uuid.UUID, seq: int) -> pb.Bundle:
        """The bundle at its job's final event, read once for all its watchers."""

        async def read() -> pb.Bundle:
            return self._bundle(await self.d.bundles.get(bundle_id))

        bundle: pb.Bundle = await self._reads.do(("bundle", bundle_id, seq), read)
        return bundle

    # --- bundles ------------------------------------------------------------------------------

    @unary
    async def FindOrCreateBundle(self, request: pb.FindOrCreateBundleRequest, context: Context) -> pb.Bundle:
        violations: list[tuple[str, str]] = []
        check_caller_id(request.work_id, "work_id", violations)
        kind = convert.BUNDLE_KINDS.get(request.kind)
        if kind is None:
            violations.append(("kind", "must be BUNDLE_KIND_PDF or BUNDLE_KIND_ZIP"))
        if violations:
            raise InvalidArgument(violations)
        assert kind is not None
        return self._bundle(await self.d.bundles.find_or_create(request.work_id, kind, current_principal()))

    @streaming
    async def ReadBundle(self, request: pb.ReadBundleRequest, context: Context) -> AsyncIterator[pb.ReadBundleResponse]:
        bundle_id = require_uuid(request.bundle_id, "bundle_id")
        if request.offset < 0:
            raise InvalidArgument.one("offset", "must be >= 0")
        bundle, size = await self.d.bundles.open_for_read(bundle_id, request.offset)
        location = bundle.location
        async for offset, chunk in read_object(self.d.storage, location.bucket, location.key, request.offset):
            yield pb.ReadBundleResponse(chunk=chunk, offset=offset, total_size=size)

    def _bundle(self, bundle: Bundle) -> pb.Bundle:
        return convert.bundle(bundle, self.d.urls)

    # --- operations ---------------------------------------------------------------------------

    @streaming
    async def ReclaimStorage(
        self, request: pb.ReclaimStorageRequest, context: Context
    ) -> AsyncIterator[pb.ReclaimStorageResponse]:
        total = BucketReport("")
        async for report in self.d.reclaimer.sweep(dry_run=request.dry_run):
            total.add(report)
            yield convert.reclaim_report(report, request.dry_run, done=False)
        yield convert.reclaim_report(total, request.dry_run, done=True)


def add_to_server(service: DerivativeService, server: grpc.aio.Server) -> None:
    """Register DerivativeService on `server`; WatchProgress sends the bytes its handler yields as they are."""
    pb_grpc.add_DerivativeServiceServicer_to_server(service, server)
    # A registered handler takes precedence over the generic one; a later registration of a method replaces it.
    watch = grpc.unary_stream_rpc_method_handler(
        service.WatchProgress, request_deserializer=pb.WatchProgressRequest.FromString, response_serializer=None
    )
    server.add_registered_method_handlers(SERVICE_NAME, {"WatchProgress": watch})


async def _header_and_chunks(messages: AsyncIterator[Any]) -> tuple[Any, AsyncIterator[bytes]]:
    """Split a client stream of `oneof part { header; chunk }`: the header (required first), then the bytes."""
    first = await anext(aiter(messages), None)
    if first is None or first.WhichOneof("part") != "header":
        raise InvalidArgument.one("header", "the first message must carry the header")
    name_request(first.header)

    async def chunks() -> AsyncIterator[bytes]:
        async for message in messages:
            if message.WhichOneof("part") != "chunk":
                raise InvalidArgument.one("header", "only the first message may carry a header")
            yield message.chunk

    return first.header, chunks()


def _ids(**fields: str) -> dict[str, str]:
    violations: list[tuple[str, str]] = []
    for name, value in fields.items():
        check_caller_id(value, name, violations)
    if violations:
        raise InvalidArgument(violations)
    return fields
