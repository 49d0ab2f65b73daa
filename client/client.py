"""A small client over the generated stubs, sync and async, for scripts and the CLI."""

from __future__ import annotations

import shutil
import time
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import grpc

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


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            yield block


class Client:
    """Blocking client."""

    def __init__(self, address: str = "127.0.0.1:50051") -> None:
        self.channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.DerivativeServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def upload(self, asset_id: str, path: Path, content_type: str = "", skip_derivatives: bool = False) -> pb.Asset:
        header = pb.UploadOriginalHeader(
            asset_id=asset_id, content_type=content_type, skip_derivatives=skip_derivatives, filename=path.name
        )

        def messages() -> Iterator[pb.UploadOriginalRequest]:
            yield pb.UploadOriginalRequest(header=header)
            for block in _chunks(path):
                yield pb.UploadOriginalRequest(chunk=block)

        response: pb.Asset = self.stub.UploadOriginal(messages())
        return response

    def list_asset_ids(self, page_size: int = 1000) -> Iterator[str]:
        token = ""
        while True:
            page = self.stub.ListAssets(pb.ListAssetsRequest(page_size=page_size, page_token=token))
            yield from page.asset_ids
            token = page.next_page_token
            if not token:
                return

    def work_members(self, work_id: str) -> list[str]:
        return list(self.stub.GetWork(pb.GetWorkRequest(work_id=work_id)).member_asset_ids)

    def create_derivatives(
        self, asset_ids: Iterable[str], only: Iterable[str] = (), exclude: Iterable[str] = (), lazy: bool = False
    ) -> pb.Job:
        request = pb.CreateDerivativesRequest(
            asset_ids=list(asset_ids), only=list(only), exclude=list(exclude), lazy=lazy
        )
        job: pb.Job = self.stub.CreateDerivatives(request)
        return job

    def get_job(self, job_id: str) -> pb.Job:
        job: pb.Job = self.stub.GetJob(pb.GetJobRequest(job_id=job_id))
        return job

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
                    for part in self.stub.ReadBundle(pb.ReadBundleRequest(bundle_id=bundle.bundle_id)):
                        out.write(part.chunk)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)

    def watch(self, job_id: str = "", bundle_id: str = "", after_seq: int = 0) -> Iterator[pb.ProgressEvent]:
        """Progress events until the final one; reconnects with `after_seq` if the stream drops."""
        last = after_seq
        retries = 0
        while True:
            try:
                for event in self.stub.WatchProgress(_watch_request(job_id, bundle_id, last)):
                    retries = 0
                    last = max(last, event.seq)
                    yield event
                return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or retries >= 5:
                    raise
                retries += 1
                time.sleep(0.5 * retries)


class AsyncClient:
    """asyncio client with the same calls that matter for services."""

    def __init__(self, address: str = "127.0.0.1:50051") -> None:
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.DerivativeServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def put_asset(
        self, asset_id: str, data: bytes, content_type: str = "", skip_derivatives: bool = False
    ) -> pb.Asset:
        request = pb.PutAssetRequest(
            asset_id=asset_id, data=data, content_type=content_type, skip_derivatives=skip_derivatives
        )
        asset: pb.Asset = await self.stub.PutAsset(request)
        return asset

    async def get_asset(self, asset_id: str) -> pb.Asset:
        asset: pb.Asset = await self.stub.GetAsset(pb.GetAssetRequest(asset_id=asset_id))
        return asset

    async def create_derivatives(
        self, asset_ids: Iterable[str], only: Iterable[str] = (), exclude: Iterable[str] = (), lazy: bool = False
    ) -> pb.Job:
        request = pb.CreateDerivativesRequest(
            asset_ids=list(asset_ids), only=list(only), exclude=list(exclude), lazy=lazy
        )
        job: pb.Job = await self.stub.CreateDerivatives(request)
        return job

    async def get_job(self, job_id: str) -> pb.Job:
        job: pb.Job = await self.stub.GetJob(pb.GetJobRequest(job_id=job_id))
        return job

    async def watch(self, job_id: str = "", bundle_id: str = "", after_seq: int = 0) -> AsyncIterator[pb.ProgressEvent]:
        async for event in self.stub.WatchProgress(_watch_request(job_id, bundle_id, after_seq)):
            yield event


def _watch_request(job_id: str, bundle_id: str, after_seq: int) -> pb.WatchProgressRequest:
    if job_id:
        return pb.WatchProgressRequest(job_id=job_id, after_seq=after_seq)
    return pb.WatchProgressRequest(bundle_id=bundle_id, after_seq=after_seq)
