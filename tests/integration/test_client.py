"""The Python client against the running server: one error type, uploads and watching on both clients."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import pytest

from client.client import AsyncClient, Client, ClientError
from tests import images
from tests.harness import ServerProcess


def test_errors_carry_the_code_and_the_field_violations(server: ServerProcess) -> None:
    with Client(server.address) as client:
        with pytest.raises(ClientError) as missing:
            client.get_asset("no-such-asset")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND and "no-such-asset" in missing.value.message
        with pytest.raises(ClientError) as bad:
            client.create_derivatives(["a", "has space"], only=["nope"])
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert dict(bad.value.violations).keys() == {"asset_ids[1]"}


def test_async_client_uploads_watches_and_resumes(server: ServerProcess, tmp_path: Path) -> None:
    original = tmp_path / "scan.jpg"
    original.write_bytes(images.jpeg(900, 600))
    asset_id = f"async-{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[list[int], list[int], ClientError]:
        async with AsyncClient(server.address) as client:
            await client.upload(asset_id, original, skip_derivatives=True)
            job = await client.create_derivatives([asset_id])
            seqs = [event.seq async for event in client.watch(job_id=job.job_id)]
            resumed = [event.seq async for event in client.watch(job_id=job.job_id, after_seq=seqs[0])]
            try:
                await client.get_job(str(uuid.uuid4()))
            except ClientError as exc:
                return seqs, resumed, exc
            raise AssertionError("an unknown job was found")

    seqs, resumed, error = asyncio.run(scenario())
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert resumed and resumed[0] > seqs[0]  # nothing at or before after_seq again
    assert error.code == grpc.StatusCode.NOT_FOUND
