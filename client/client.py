"""A small Python client over the generated stubs: `Client` (blocking) and `AsyncClient` (asyncio).

The two mirror each other: the same operations under the same names and parameters (a unit
test compares their signatures), and one error type, `ClientError`, that carries the gRPC code,
the `google.rpc.BadRequest` field violations and, when the server sends one, the
`google.rpc.ErrorInfo` reason. `watch` reconnects when the stream drops and resumes with
`after_seq`, so no event is lost or repeated.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import grpc
from google.rpc import error_details_pb2, status_pb2

from derivatives.v1 import derivatives_pb2 as pb
from derivatives.v1 import derivatives_pb2_grpc as pb_grpc

CHUNK = 1024 * 1024
TERMINAL = (pb.STAGE_SUCCEEDED, pb.STAGE_FAILED)
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
    # Progress streams may stay quiet for minutes: keep the connection alive.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]
# With several channels, each its own connection (gRPC shares one between channels to the same target otherwise):
# a server host with several serving processes balances connections, not calls.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
# A dropped WatchProgress stream is reopened this many times in a row, waiting a little longer each time.
WATCH_RETRIES = 5
_STATUS_DETAILS = "grpc-status-details-bin"


@dataclass(eq=False)
class ClientError(Exception):
    """A call that failed: its gRPC code, message, field violations and (if sent) ErrorInfo reason."""

    code: grpc.StatusCode
    message: str
    # (field path, description) per field of the request that was wrong (INVALID_ARGUMENT).
    violations: list[tuple[str, str]] = field(default_factory=list)
    # The google.rpc.ErrorInfo reason (every error of the service carries one, e.g. "ASSET_NOT_FOUND"); "" if absent.
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @classmethod
    def from_rpc(cls, exc: grpc.RpcError) -> ClientError:
        """The error of a failed call, sync or asyncio, with its details decoded."""
        code: grpc.StatusCode = exc.code()
        message: str = exc.details() or ""
        violations: list[tuple[str, str]] = []
        reason = ""
        metadata: Any = exc.trailing_metadata() or ()
        for key, value in metadata:
            if key != _STATUS_DETAILS:
                continue
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    violations += [(v.field, v.description) for v in bad.field_violations]
                elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason = info.reason
        return cls(code, message, violations, reason)


def _auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def _channel_credentials(ca_file: str, cert_file: str, key_file: str, tls: bool) -> grpc.ChannelCredentials | None:
    """TLS credentials when any TLS parameter is given, else None (plaintext)."""
    if not (ca_file or cert_file or key_file or tls):
        return None
    if bool(cert_file) != bool(key_file):
        raise ValueError("a client certificate needs both cert_file and key_file")
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca_file).read_bytes() if ca_file else None,
        private_key=Path(key_file).read_bytes() if key_file else None,
        certificate_chain=Path(cert_file).read_bytes() if cert_file else None,
    )


def _upload_header(asset_id: str, path: Path, content_type: str, skip: bool) -> pb.UploadOriginalRequest:
    header = pb.UploadOriginalHeader(
        asset_id=asset_id, content_type=content_type, skip_derivatives=skip, filename=path.name
    )
    return pb.UploadOriginalRequest(header=header)


def _upload_messages(header: pb.UploadOriginalRequest, fh: BinaryIO) -> Iterator[pb.UploadOriginalRequest]:
    yield header
    while block := fh.read(CHUNK):
        yield pb.UploadOriginalRequest(chunk=block)


async def _upload_messages_async(
    header: pb.UploadOriginalRequest, fh: BinaryIO
) -> AsyncIterator[pb.UploadOriginalRequest]:
    yield header
    while block := await asyncio.to_thread(fh.read, CHUNK):  # disk reads off the event loop
        yield pb.UploadOriginalRequest(chunk=block)


def _watch_request(job_id: str, bundle_id: str, after_seq: int) -> pb.WatchProgressRequest:
    if job_id:
        return pb.WatchProgressRequest(job_id=job_id, after_seq=after_seq)
    return pb.WatchProgressRequest(bundle_id=bundle_id, after_seq=after_seq)


def _repeated(event: pb.ProgressEvent, last: int) -> bool:
    """After a reconnect, the snapshot of a state already seen (not a heartbeat, not the final event)."""
    return event.seq <= last and not event.heartbeat and event.WhichOneof("result") is None


def _retryable(exc: grpc.RpcError, retries: int) -> bool:
    return exc.code() == grpc.StatusCode.UNAVAILABLE and retries < WATCH_RETRIES


def _bundle_kind(kind: str) -> pb.BundleKind:
    kinds = {"pdf": pb.BUNDLE_KIND_PDF, "zip": pb.BUNDLE_KIND_ZIP}
    if kind not in kinds:
        raise ValueError(f"kind must be 'pdf' or 'zip', not {kind!r}")
    return kinds[kind]


class _Stubs:
    """Stubs over `count` channels, one after the other call by call (`channels`, both clients)."""

    def __init__(self, channels: list[Any]) -> None:
        self.channels = channels
        self._stubs = itertools.cycle([pb_grpc.DerivativeServiceStub(c) for c in channels])

    def next(self) -> pb_grpc.DerivativeServiceStub:
        return next(self._stubs)


def _open_channels(
    grpc_module: Any, address: str, credentials: grpc.ChannelCredentials | None, count: int
) -> list[Any]:
    if count < 1:
        raise ValueError(f"channels must be at least 1, got {count}")
    options = CHANNEL_OPTIONS + (OWN_CONNECTION if count > 1 else [])
    if credentials is None:
        return [grpc_module.insecure_channel(address, options=options) for _ in range(count)]
    return [grpc_module.secure_channel(address, credentials, options=options) for _ in range(count)]


class Client:
    """Blocking client. Every call raises ClientError on failure.

    `token` is sent as `authorization: Bearer <token>` on every call; `ca_file` (the CA that signed
    the server's certificate) or `tls=True` (the system's CAs) connects with TLS; `cert_file` and
    `key_file` add a client certificate (mutual TLS). `channels=N` opens N connections and spreads the
    calls over them: a server host with several serving processes (DERIVATIVES_SERVER_PROCESSES)
    balances connections, so one connection would use one of its processes.
    """

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        token: str = "",
        ca_file: str = "",
        cert_file: str = "",
        key_file: str = "",
        tls: bool = False,
        channels: int = 1,
    ) -> None:
        credentials = _channel_credentials(ca_file, cert_file, key_file, tls)
        self._stubs = _Stubs(_open_channels(grpc, address, credentials, channels))
        self.channel: grpc.Channel = self._stubs.channels[0]
        self.metadata = _auth_metadata(token)

    @property
    def stub(self) -> pb_grpc.DerivativeServiceStub:
        """The stub of the next channel (each call takes the next one)."""
        return self._stubs.next()

    def close(self) -> None:
        for channel in self._stubs.channels:
            channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise ClientError.from_rpc(exc) from None

    # --- assets and works ---------------------------------------------------------------------

    def upload(self, asset_id: str, path: Path, content_type: str = "", skip_derivatives: bool = False) -> pb.Asset:
        """Stream a file as the asset's original (UploadOriginal); a file that cannot be read is an OSError."""
        with open(path, "rb") as fh:  # opened before the call, so its error is the caller's, not the stream's
            messages = _upload_messages(_upload_header(asset_id, path, content_type, skip_derivatives), fh)
            asset: pb.Asset = self._call(self.stub.UploadOriginal, messages)
        return asset

    def put_asset(self, asset_id: str, data: bytes, content_type: str = "", skip_derivatives: bool = False) -> pb.Asset:
        """Store bytes held in memory as the asset's original (PutAsset)."""
        request = pb.PutAssetRequest(
            asset_id=asset_id, data=data, content_type=content_type, skip_derivatives=skip_derivatives
        )
        asset: pb.Asset = self._call(self.stub.PutAsset, request)
        return asset

    def get_asset(self, asset_id: str) -> pb.Asset:
        asset: pb.Asset = self._call(self.stub.GetAsset, pb.GetAssetRequest(asset_id=asset_id))
        return asset

    def list_asset_ids(self, page_size: int = 1000) -> Iterator[str]:
        token = ""
        while True:
            page = self._call(self.stub.ListAssets, pb.ListAssetsRequest(page_size=page_size, page_token=token))
            yield from page.asset_ids
            token = page.next_page_token
            if not token:
                return

    def put_work(
        self, work_id: str, title: str, member_asset_ids: Iterable[str], creator: str = "", url: str = ""
    ) -> pb.Work:
        request = pb.PutWorkRequest(
            work_id=work_id, title=title, member_asset_ids=list(member_asset_ids), creator=creator, url=url
        )
        work: pb.Work = self._call(self.stub.PutWork, request)
        return work

    def get_work(self, work_id: str) -> pb.Work:
        work: pb.Work = self._call(self.stub.GetWork, pb.GetWorkRequest(work_id=work_id))
        return work

    def work_members(self, work_id: str) -> list[str]:
        return list(self.get_work(work_id).member_asset_ids)

    # --- derivatives and jobs -----------------------------------------------------------------

    def create_derivatives(
        self, asset_ids: Iterable[str], only: Iterable[str] = (), exclude: Iterable[str] = (), lazy: bool = False
    ) -> pb.Job:
        request = pb.CreateDerivativesRequest(
            asset_ids=list(asset_ids), only=list(only), exclude=list(exclude), lazy=lazy
        )
        job: pb.Job = self._call(self.stub.CreateDerivatives, request)
        return job

    def get_job(self, job_id: str) -> pb.Job:
        job: pb.Job = self._call(self.stub.GetJob, pb.GetJobRequest(job_id=job_id))
        return job

    def watch(self, job_id: str = "", bundle_id: str = "", after_seq: int = 0) -> Iterator[pb.ProgressEvent]:
        """Progress events until the final one; reconnects with `after_seq` if the stream drops (and skips
        the snapshot of a state it already yielded)."""
        last, retries, reconnected = after_seq, 0, False
        while True:
            try:
                for event in self.stub.WatchProgress(_watch_request(job_id, bundle_id, last), metadata=self.metadata):
                    if reconnected and _repeated(event, last):
                        continue
                    retries, reconnected = 0, False
                    last = max(last, event.seq)
                    yield event
                return
            except grpc.RpcError as exc:
                if not _retryable(exc, retries):
                    raise ClientError.from_rpc(exc) from None
                retries, reconnected = retries + 1, True
                time.sleep(0.5 * retries)

    # --- bundles ------------------------------------------------------------------------------

    def find_or_create_bundle(self, work_id: str, kind: str) -> pb.Bundle:
        """The work's bundle of `kind` ("pdf" or "zip"): built, or being built (watch it)."""
        request = pb.FindOrCreateBundleRequest(work_id=work_id, kind=_bundle_kind(kind))
        bundle: pb.Bundle = self._call(self.stub.FindOrCreateBundle, request)
        return bundle

    # --- operations ---------------------------------------------------------------------------

    def reclaim_storage(self, dry_run: bool = False) -> Iterator[pb.ReclaimStorageResponse]:
        """Sweep storage for objects no row references (admin scope): one report per bucket, then the total."""
        try:
            yield from self.stub.ReclaimStorage(pb.ReclaimStorageRequest(dry_run=dry_run), metadata=self.metadata)
        except grpc.RpcError as exc:
            raise ClientError.from_rpc(exc) from None

    def download_bundle(self, bundle: pb.Bundle, target: Path) -> None:
        """Fetch a built bundle: from its presigned URL when there is one, else through ReadBundle.

        Writes to a temporary file beside `target` and renames it, so a failed download leaves nothing.
        """
        partial = target.with_name(target.name + ".part")
        try:
            with open(partial, "wb") as out:
                if bundle.url:
                    with urllib.request.urlopen(bundle.url, timeout=60) as response:
                        shutil.copyfileobj(response, out, CHUNK)
                else:
                    try:
                        for part in self.stub.ReadBundle(
                            pb.ReadBundleRequest(bundle_id=bundle.bundle_id), metadata=self.metadata
                        ):
                            out.write(part.chunk)
                    except grpc.RpcError as exc:
                        raise ClientError.from_rpc(exc) from None
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)


class AsyncClient:
    """asyncio client: the same operations as Client, awaited. Every call raises ClientError on failure.

    The same connection parameters as Client (`channels` included).
    """

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        token: str = "",
        ca_file: str = "",
        cert_file: str = "",
        key_file: str = "",
        tls: bool = False,
        channels: int = 1,
    ) -> None:
        credentials = _channel_credentials(ca_file, cert_file, key_file, tls)
        self._stubs = _Stubs(_open_channels(grpc.aio, address, credentials, channels))
        self.channel: grpc.aio.Channel = self._stubs.channels[0]
        self.metadata = _auth_metadata(token)

    @property
    def stub(self) -> pb_grpc.DerivativeServiceStub:
        """The stub of the next channel (each call takes the next one)."""
        return self._stubs.next()

    async def close(self) -> None:
        for channel in self._stubs.channels:
            await channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise ClientError.from_rpc(exc) from None

    # --- assets and works ---------------------------------------------------------------------

    async def upload(
        self, asset_id: str, path: Path, content_type: str = "", skip_derivatives: bool = False
    ) -> pb.Asset:
        """Stream a file as the asset's original (UploadOriginal); a file that cannot be read is an OSError."""
        fh = await asyncio.to_thread(path.open, "rb")  # opened before the call, so its error is the caller's
        try:
            messages = _upload_messages_async(_upload_header(asset_id, path, content_type, skip_derivatives), fh)
            asset: pb.Asset = await self._call(self.stub.UploadOriginal, messages)
        finally:
            await asyncio.to_thread(fh.close)
        return asset

    async def put_asset(
        self, asset_id: str, data: bytes, content_type: str = "", skip_derivatives: bool = False
    ) -> pb.Asset:
        """Store bytes held in memory as the asset's original (PutAsset)."""
        request = pb.PutAssetRequest(
            asset_id=asset_id, data=data, content_type=content_type, skip_derivatives=skip_derivatives
        )
        asset: pb.Asset = await self._call(self.stub.PutAsset, request)
        return asset

    async def get_asset(self, asset_id: str) -> pb.Asset:
        asset: pb.Asset = await self._call(self.stub.GetAsset, pb.GetAssetRequest(asset_id=asset_id))
        return asset

    async def list_asset_ids(self, page_size: int = 1000) -> AsyncIterator[str]:
        token = ""
        while True:
            request = pb.ListAssetsRequest(page_size=page_size, page_token=token)
            page = await self._call(self.stub.ListAssets, request)
            for asset_id in page.asset_ids:
                yield asset_id
            token = page.next_page_token
            if not token:
                return

    async def put_work(
        self, work_id: str, title: str, member_asset_ids: Iterable[str], creator: str = "", url: str = ""
    ) -> pb.Work:
        request = pb.PutWorkRequest(
            work_id=work_id, title=title, member_asset_ids=list(member_asset_ids), creator=creator, url=url
        )
        work: pb.Work = await self._call(self.stub.PutWork, request)
        return work

    async def get_work(self, work_id: str) -> pb.Work:
        work: pb.Work = await self._call(self.stub.GetWork, pb.GetWorkRequest(work_id=work_id))
        return work

    async def work_members(self, work_id: str) -> list[str]:
        return list((await self.get_work(work_id)).member_asset_ids)

    # --- derivatives and jobs -----------------------------------------------------------------

    async def create_derivatives(
        self, asset_ids: Iterable[str], only: Iterable[str] = (), exclude: Iterable[str] = (), lazy: bool = False
    ) -> pb.Job:
        request = pb.CreateDerivativesRequest(
            asset_ids=list(asset_ids), only=list(only), exclude=list(exclude), lazy=lazy
        )
        job: pb.Job = await self._call(self.stub.CreateDerivatives, request)
        return job

    async def get_job(self, job_id: str) -> pb.Job:
        job: pb.Job = await self._call(self.stub.GetJob, pb.GetJobRequest(job_id=job_id))
        return job

    async def watch(self, job_id: str = "", bundle_id: str = "", after_seq: int = 0) -> AsyncIterator[pb.ProgressEvent]:
        """Progress events until the final one; reconnects with `after_seq` if the stream drops (and skips
        the snapshot of a state it already yielded)."""
        last, retries, reconnected = after_seq, 0, False
        while True:
            try:
                async for event in self.stub.WatchProgress(
                    _watch_request(job_id, bundle_id, last), metadata=self.metadata
                ):
                    if reconnected and _repeated(event, last):
                        continue
                    retries, reconnected = 0, False
                    last = max(last, event.seq)
                    yield event
                return
            except grpc.RpcError as exc:
                if not _retryable(exc, retries):
                    raise ClientError.from_rpc(exc) from None
                retries, reconnected = retries + 1, True
                await asyncio.sleep(0.5 * retries)

    # --- bundles ------------------------------------------------------------------------------

    async def find_or_create_bundle(self, work_id: str, kind: str) -> pb.Bundle:
        """The work's bundle of `kind` ("pdf" or "zip"): built, or being built (watch it)."""
        request = pb.FindOrCreateBundleRequest(work_id=work_id, kind=_bundle_kind(kind))
        bundle: pb.Bundle = await self._call(self.stub.FindOrCreateBundle, request)
        return bundle

    # --- operations ---------------------------------------------------------------------------

    async def reclaim_storage(self, dry_run: bool = False) -> AsyncIterator[pb.ReclaimStorageResponse]:
        """Sweep storage for objects no row references (admin scope): one report per bucket, then the total."""
        try:
            request = pb.ReclaimStorageRequest(dry_run=dry_run)
            async for report in self.stub.ReclaimStorage(request, metadata=self.metadata):
                yield report
        except grpc.RpcError as exc:
            raise ClientError.from_rpc(exc) from None

    async def download_bundle(self, bundle: pb.Bundle, target: Path) -> None:
        """Fetch a built bundle: from its presigned URL when there is one, else through ReadBundle.

        Writes to a temporary file of its own beside `target` and renames it, so a failed or cancelled
        download leaves nothing (a thread still writing writes to a file no longer named).
        """
        fd, name = await asyncio.to_thread(
            tempfile.mkstemp, dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
        partial = Path(name)
        out = os.fdopen(fd, "wb")
        try:
            if bundle.url:
                await asyncio.to_thread(_fetch_url, bundle.url, out)
            else:
                try:
                    async for part in self.stub.ReadBundle(
                        pb.ReadBundleRequest(bundle_id=bundle.bundle_id), metadata=self.metadata
                    ):
                        await asyncio.to_thread(out.write, part.chunk)
                except grpc.RpcError as exc:
                    raise ClientError.from_rpc(exc) from None
            await asyncio.to_thread(out.close)
            await asyncio.to_thread(partial.replace, target)
        finally:
            out.close()
            await asyncio.to_thread(partial.unlink, missing_ok=True)


def _fetch_url(url: str, out: BinaryIO) -> None:
    with urllib.request.urlopen(url, timeout=60) as response:
        shutil.copyfileobj(response, out, CHUNK)
