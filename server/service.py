"""DerivativeService handlers: validate the request, delegate to one domain module, convert."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from google.protobuf import empty_pb2

from core.assets import Assets, AssetView
from core.config import Settings
from core.errors import InvalidArgument
from core.ids import SHA512_HEX, check_caller_id
from core.media import Spooled, spool_async, spool_stream
from core.storage import ObjectStorage
from core.works import MAX_MEMBERS, Works
from derivatives.v1 import derivatives_pb2 as pb
from derivatives.v1 import derivatives_pb2_grpc as pb_grpc
from server import convert
from server.status import unary

log = logging.getLogger("derivatives.service")
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


@dataclass
class Domain:
    """Everything the handlers delegate to."""

    settings: Settings
    storage: ObjectStorage
    assets: Assets
    works: Works


class DerivativeService(pb_grpc.DerivativeServiceServicer):
    def __init__(self, domain: Domain) -> None:
        self.d = domain
        self.url_expiry = dt.timedelta(seconds=domain.settings.url_expiry_seconds)

    def _asset(self, view: AssetView) -> pb.Asset:
        return convert.asset(view, self.d.storage, self.url_expiry, derivatives_created=False)

    # --- assets -------------------------------------------------------------------------------

    @unary
    async def PutAsset(self, request: pb.PutAssetRequest, context: Context) -> pb.Asset:
        violations: list[tuple[str, str]] = []
        check_caller_id(request.asset_id, "asset_id", violations)
        source = request.WhichOneof("source")
        if source is None:
            violations.append(("source", "set `data` or `storage_ref`"))
        if violations:
            raise InvalidArgument(violations)
        spooled: Spooled
        if source == "data":
            path = self.d.assets.temp_path()
            spooled = await asyncio.to_thread(spool_stream, [request.data], path)
        else:
            ref = request.storage_ref
            spooled = await self.d.assets.spool_from_storage(ref.bucket, ref.key)
        view = await self.d.assets.put(
            request.asset_id,
            request.content_type,
            spooled,
            filename=request.filename,
            skip_derivatives=request.skip_derivatives,
        )
        return self._asset(view)

    @unary
    async def UploadOriginal(
        self, request_iterator: AsyncIterator[pb.UploadOriginalRequest], context: Context
    ) -> pb.Asset:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument.one("header", "the first message must carry the header")
        header = first.header
        violations: list[tuple[str, str]] = []
        check_caller_id(header.asset_id, "header.asset_id", violations)
        if header.expected_sha512 and not SHA512_HEX.fullmatch(header.expected_sha512):
            violations.append(("header.expected_sha512", "must be 128 lowercase hex digits"))
        if violations:
            raise InvalidArgument(violations)

        async def chunks() -> AsyncIterator[bytes]:
            async for message in request_iterator:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidArgument.one("header", "only the first message may carry a header")
                yield message.chunk

        spooled = await spool_async(chunks(), self.d.assets.temp_path())
        if header.expected_sha512 and spooled.sha512 != header.expected_sha512:
            spooled.path.unlink(missing_ok=True)
            raise InvalidArgument.one("header.expected_sha512", f"the received bytes have sha512 {spooled.sha512}")
        view = await self.d.assets.put(
            header.asset_id,
            header.content_type,
            spooled,
            filename=header.filename,
            skip_derivatives=header.skip_derivatives,
        )
        return self._asset(view)

    @unary
    async def GetAsset(self, request: pb.GetAssetRequest, context: Context) -> pb.Asset:
        check = _ids(asset_id=request.asset_id)
        return self._asset(await self.d.assets.get(check["asset_id"]))

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
        if len(request.member_asset_ids) > MAX_MEMBERS:
            violations.append(("member_asset_ids", f"at most {MAX_MEMBERS} members"))
        for i, member in enumerate(request.member_asset_ids):
            check_caller_id(member, f"member_asset_ids[{i}]", violations)
            if len(violations) >= 20:
                break
        if violations:
            raise InvalidArgument(violations)
        view = await self.d.works.put(
            request.work_id, request.title, list(request.member_asset_ids), request.creator, request.url
        )
        return convert.work(view)

    @unary
    async def GetWork(self, request: pb.GetWorkRequest, context: Context) -> pb.Work:
        return convert.work(await self.d.works.get(_ids(work_id=request.work_id)["work_id"]))

    # --- not built yet: an explicit UNIMPLEMENTED, never a silent stub ------------------------

    async def _unimplemented(self, context: Context, what: str) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not implemented yet")

    async def ListDerivativeDefinitions(self, request: Any, context: Context) -> Any:
        return await self._unimplemented(context, "ListDerivativeDefinitions")

    async def CreateDerivatives(self, request: Any, context: Context) -> Any:
        return await self._unimplemented(context, "CreateDerivatives")

    async def GetJob(self, request: Any, context: Context) -> Any:
        return await self._unimplemented(context, "GetJob")

    async def UpdateDerivative(self, request_iterator: Any, context: Context) -> Any:
        return await self._unimplemented(context, "UpdateDerivative")

    async def RemoveDerivative(self, request: Any, context: Context) -> Any:
        return await self._unimplemented(context, "RemoveDerivative")

    async def FindOrCreateBundle(self, request: Any, context: Context) -> Any:
        return await self._unimplemented(context, "FindOrCreateBundle")

    async def ReadBundle(self, request: Any, context: Context) -> AsyncIterator[pb.ReadBundleResponse]:
        await self._unimplemented(context, "ReadBundle")
        yield pb.ReadBundleResponse()

    async def WatchProgress(self, request: Any, context: Context) -> AsyncIterator[pb.ProgressEvent]:
        await self._unimplemented(context, "WatchProgress")
        yield pb.ProgressEvent()


def _ids(**fields: str) -> dict[str, str]:
    violations: list[tuple[str, str]] = []
    for name, value in fields.items():
        check_caller_id(value, name, violations)
    if violations:
        raise InvalidArgument(violations)
    return fields
