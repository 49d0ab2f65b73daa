"""Helpers the tests share (one module; no test file imports another).

Errors, waiting for jobs and derivatives, works and bundles through the API, and the real grpcurl.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from client.client import TERMINAL
from derivatives.v1 import derivatives_pb2 as pb
from derivatives.v1.derivatives_pb2_grpc import DerivativeServiceStub as Stub
from tests.harness import ServerProcess

__all__ = ["PDF", "ZIP", "Stub"]

PDF, ZIP = pb.BUNDLE_KIND_PDF, pb.BUNDLE_KIND_ZIP
GRPCURL = str(Path(sys.executable).parent / "grpcurl")


# --- errors ---------------------------------------------------------------------------------


# Codes a call can also end with before or without reaching a handler (no connection, a deadline, a cancel).
TRANSPORT_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


def expect_error(code: grpc.StatusCode, call: Callable[..., Any], *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    err = info.value
    assert err.code() == code, f"expected {code}, got {err.code()}: {err.details()}"
    assert "Traceback" not in (err.details() or "")
    transport = code in TRANSPORT_CODES and rpc_status.from_call(err) is None  # not an answer of the service
    assert transport or error_reason(err), f"no ErrorInfo on {err.code()}: {err.details()}"
    return err


def error_reason(err: grpc.RpcError) -> str:
    """The reason of the one google.rpc.ErrorInfo every error of the service carries ("" if none)."""
    status = rpc_status.from_call(err)
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)] if status else []
    assert len(infos) <= 1, "more than one ErrorInfo"
    if not infos:
        return ""
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    assert info.domain == "derivatives.v1"
    return info.reason


def field_violations(err: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status details on the error"
    out = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.update({v.field: v.description for v in bad.field_violations})
    return out


# --- jobs and derivatives -------------------------------------------------------------------


def wait_job(stub: Stub, job_id: str, timeout: float = 120.0) -> pb.Job:
    deadline = time.monotonic() + timeout
    while True:
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id))
        if job.stage in TERMINAL:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {pb.Stage.Name(job.stage)} at {job.done}/{job.total}")
        time.sleep(0.05)


def wait_derivatives_created(stub: Stub, asset_id: str, timeout: float = 120.0) -> pb.Asset:
    deadline = time.monotonic() + timeout
    while True:
        asset = stub.GetAsset(pb.GetAssetRequest(asset_id=asset_id))
        if asset.derivatives_created:
            return asset
        if time.monotonic() > deadline:
            raise TimeoutError(f"{asset_id}: derivatives never created; have {[d.key for d in asset.derivatives]}")
        time.sleep(0.05)


# --- works and bundles -----------------------------------------------------------------------


def make_work(stub: Stub, originals: list[bytes], title: str = "Letters from the Front, 1916") -> tuple[str, list[str]]:
    ids = [f"b-{uuid.uuid4().hex[:8]}" for _ in originals]
    for asset_id, data in zip(ids, originals, strict=True):
        stub.PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=data, skip_derivatives=True))
    work_id = f"w-{uuid.uuid4().hex[:8]}"
    stub.PutWork(
        pb.PutWorkRequest(
            work_id=work_id,
            title=title,
            member_asset_ids=ids,
            creator="Science History Institute",
            url="https://example.org/works/1",
        )
    )
    return work_id, ids


def wait_bundle(stub: Stub, work_id: str, kind: pb.BundleKind) -> pb.Bundle:
    bundle = stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=work_id, kind=kind))
    if bundle.status == pb.BUNDLE_STATUS_IN_PROGRESS:
        events = list(stub.WatchProgress(pb.WatchProgressRequest(bundle_id=bundle.bundle_id), timeout=300))
        assert events[-1].WhichOneof("result") == "bundle"
        bundle = events[-1].bundle
    return bundle


def read_bundle(stub: Stub, bundle: pb.Bundle, offset: int = 0) -> bytes:
    return b"".join(
        r.chunk for r in stub.ReadBundle(pb.ReadBundleRequest(bundle_id=bundle.bundle_id, offset=offset), timeout=120)
    )


# --- grpcurl ---------------------------------------------------------------------------------


def grpcurl(
    server: ServerProcess, *args: str, data: dict[str, Any] | None = None, options: Sequence[str] = ("-plaintext",)
) -> subprocess.CompletedProcess[str]:
    """The real grpcurl against the server; `options` for TLS (-cacert ...) and headers (-H ...)."""
    cmd = [GRPCURL, *options, "-max-msg-sz", str(64 << 20)]
    if data is not None:
        cmd += ["-d", "@"]
    cmd += [server.address, *args]
    return subprocess.run(
        cmd, input=json.dumps(data) if data is not None else None, capture_output=True, text=True, timeout=60
    )


def grpcurl_stream(server: ServerProcess, method: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    """Run a server-streaming call through grpcurl; its JSON messages, in order."""
    out = grpcurl(server, f"derivatives.v1.DerivativeService/{method}", data=data)
    assert out.returncode == 0, out.stderr
    decoder, text, messages = json.JSONDecoder(), out.stdout.strip(), []
    while text:
        message, end = decoder.raw_decode(text)
        messages.append(message)
        text = text[end:].strip()
    return messages
