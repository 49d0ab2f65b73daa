"""The trust model through real servers: tokens and scopes on every kind of RPC, TLS and mTLS with
certificates made here, refusals off loopback, per-principal job limits, byte limits, short errors."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from derivatives.v1 import derivatives_pb2 as pb
from derivatives.v1 import derivatives_pb2_grpc as pb_grpc
from tests import images
from tests.certs import Authority
from tests.harness import ROOT, Postgres, ServerProcess, free_port, server_env
from tests.helpers import Stub, error_reason, expect_error, field_violations, grpcurl

UNAUTHENTICATED, DENIED = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED
INVALID = grpc.StatusCode.INVALID_ARGUMENT
TOKENS = {  # name: (scopes, token)
    "reader": (["read"], "tok-reader-" + uuid.uuid4().hex),
    "writer": (["write"], "tok-writer-" + uuid.uuid4().hex),
    "admin": (["admin"], "tok-admin-" + uuid.uuid4().hex),
    "all": (["read", "write", "admin"], "tok-all-" + uuid.uuid4().hex),
    "quota": (["write"], "tok-quota-" + uuid.uuid4().hex),
}
MAX_ORIGINAL, MAX_DERIVATIVE, MAX_JOBS = 200_000, 50_000, 2


def tokens_toml(
    tokens: dict[str, tuple[list[str], str]], subjects: dict[str, tuple[list[str], str]] | None = None
) -> str:
    tables = []
    for name, (scopes, token) in tokens.items():
        listed = ", ".join(f'"{s}"' for s in scopes)
        digest = hashlib.sha256(token.encode()).hexdigest()
        tables.append(f'[[token]]\nname = "{name}"\nscopes = [{listed}]\nsha256 = "{digest}"\n')
    for name, (scopes, subject) in (subjects or {}).items():
        listed = ", ".join(f'"{s}"' for s in scopes)
        tables.append(f'[[token]]\nname = "{name}"\nscopes = [{listed}]\nsubject = "{subject}"\n')
    return "\n".join(tables)


def bearer(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[name][1]}"),)


@dataclass
class Guarded:
    server: ServerProcess
    stub: Stub
    tokens_file: Path
    asset_id: str  # an asset with skip_derivatives, made by "all"
    job_id: str  # a queued job (no workers here: it stays queued)


@pytest.fixture(scope="module")
def guarded(postgres: Postgres, work_dir: Path) -> Iterator[Guarded]:
    """Bearer tokens on loopback (plaintext is allowed there), small limits, no workers: jobs stay queued."""
    tokens_file = work_dir / "tokens-guarded.toml"
    tokens_file.write_text(tokens_toml(TOKENS))
    env = server_env(
        "file",
        postgres.new_database("guarded"),
        work_dir / "data-guarded",
        None,
        DERIVATIVES_TOKENS_FILE=str(tokens_file),
        DERIVATIVES_WORKERS="0",
        DERIVATIVES_MAX_JOBS_PER_PRINCIPAL=str(MAX_JOBS),
        DERIVATIVES_MAX_ORIGINAL_BYTES=str(MAX_ORIGINAL),
        DERIVATIVES_MAX_DERIVATIVE_BYTES=str(MAX_DERIVATIVE),
    )
    server = ServerProcess(env, work_dir / "server-guarded.log").start()
    try:
        with server.channel() as channel:
            stub = pb_grpc.DerivativeServiceStub(channel)
            asset_id = "sec-" + uuid.uuid4().hex[:8]
            request = pb.PutAssetRequest(asset_id=asset_id, data=images.png(64, 48), skip_derivatives=True)
            stub.PutAsset(request, metadata=bearer("all"))
            job = stub.CreateDerivatives(pb.CreateDerivativesRequest(asset_ids=[asset_id]), metadata=bearer("all"))
            yield Guarded(server, stub, tokens_file, asset_id, job.job_id)
    finally:
        assert server.stop() == 0, server.tail()


# --- each scope against each kind of RPC -----------------------------------------------------------


def _upload(g: Guarded, metadata: Any) -> Any:
    header = pb.UploadOriginalHeader(asset_id="up-" + uuid.uuid4().hex[:8], skip_derivatives=True)
    messages = [pb.UploadOriginalRequest(header=header), pb.UploadOriginalRequest(chunk=images.png(16, 16))]
    return g.stub.UploadOriginal(iter(messages), metadata=metadata)


def _watch(g: Guarded, metadata: Any) -> Any:
    stream = g.stub.WatchProgress(pb.WatchProgressRequest(job_id=g.job_id), metadata=metadata)
    first = next(stream)  # the snapshot of the queued job
    stream.cancel()
    return first


def _read_bundle(g: Guarded, metadata: Any) -> Any:
    return list(g.stub.ReadBundle(pb.ReadBundleRequest(bundle_id=str(uuid.uuid4())), metadata=metadata))


def _delete(g: Guarded, metadata: Any) -> Any:
    return g.stub.DeleteAsset(pb.DeleteAssetRequest(asset_id="never-" + uuid.uuid4().hex[:8]), metadata=metadata)


# (RPC, its kind, the scope it needs, the call, the status a caller with that scope gets)
CALLS: list[tuple[str, str, Callable[[Guarded, Any], Any], grpc.StatusCode]] = [
    (
        "GetAsset (unary)",
        "read",
        lambda g, m: g.stub.GetAsset(pb.GetAssetRequest(asset_id=g.asset_id), metadata=m),
        grpc.StatusCode.OK,
    ),
    ("UploadOriginal (client stream)", "write", _upload, grpc.StatusCode.OK),
    ("WatchProgress (server stream)", "read", _watch, grpc.StatusCode.OK),
    ("ReadBundle (server stream)", "read", _read_bundle, grpc.StatusCode.NOT_FOUND),
    ("DeleteAsset (unary)", "admin", _delete, grpc.StatusCode.NOT_FOUND),
]


def _outcome(call: Callable[[Guarded, Any], Any], g: Guarded, metadata: Any) -> tuple[grpc.StatusCode, str]:
    try:
        call(g, metadata)
    except grpc.RpcError as exc:
        return exc.code(), error_reason(exc)
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("rpc,scope,call,allowed", CALLS, ids=[c[0] for c in CALLS])
def test_each_scope_on_each_kind_of_rpc(
    guarded: Guarded, rpc: str, scope: str, call: Callable[[Guarded, Any], Any], allowed: grpc.StatusCode
) -> None:
    holder = {"read": "reader", "write": "writer", "admin": "admin"}[scope]
    assert _outcome(call, guarded, bearer(holder))[0] == allowed  # the right token
    for other in {"reader", "writer", "admin"} - {holder}:  # a token without the scope
        assert _outcome(call, guarded, bearer(other)) == (DENIED, "SCOPE_REQUIRED"), other
    assert _outcome(call, guarded, ()) == (UNAUTHENTICATED, "CREDENTIALS_MISSING")
    assert _outcome(call, guarded, (("authorization", "Bearer not-a-token"),)) == (
        UNAUTHENTICATED,
        "CREDENTIALS_INVALID",
    )
    assert _outcome(call, guarded, (("authorization", TOKENS[holder][1]),)) == (  # no "Bearer "
        UNAUTHENTICATED,
        "CREDENTIALS_INVALID",
    )


def test_permission_denied_names_the_scope(guarded: Guarded) -> None:
    err = expect_error(DENIED, guarded.stub.DeleteAsset, pb.DeleteAssetRequest(asset_id="x"), metadata=bearer("reader"))
    assert "'admin'" in (err.details() or "") and "reader" in (err.details() or "")
    info = error_details_pb2.ErrorInfo()
    status = rpc_status.from_call(err)
    assert status is not None and status.details[0].Unpack(info)
    assert info.metadata["scope"] == "admin"


def test_health_and_reflection_stay_open(guarded: Guarded) -> None:
    with guarded.server.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    listed = grpcurl(guarded.server, "list")
    assert listed.returncode == 0 and "derivatives.v1.DerivativeService" in listed.stdout, listed.stderr


def test_grpcurl_with_a_token(guarded: Guarded) -> None:
    method = "derivatives.v1.DerivativeService/GetAsset"
    without = grpcurl(guarded.server, method, data={"asset_id": guarded.asset_id})
    assert without.returncode != 0 and "Unauthenticated" in without.stderr
    header = f"authorization: Bearer {TOKENS['reader'][1]}"
    ok = grpcurl(guarded.server, method, data={"asset_id": guarded.asset_id}, options=("-plaintext", "-H", header))
    assert ok.returncode == 0 and guarded.asset_id in ok.stdout, ok.stderr


def test_the_principal_is_on_the_log_lines_of_its_calls(guarded: Guarded) -> None:
    """FindOrCreateBundle (read) by the reader claims a build: that log line names the reader."""
    work_id = "w-" + uuid.uuid4().hex[:8]
    request = pb.PutWorkRequest(work_id=work_id, title="Logged", member_asset_ids=[guarded.asset_id])
    guarded.stub.PutWork(request, metadata=bearer("writer"))
    bundle = guarded.stub.FindOrCreateBundle(
        pb.FindOrCreateBundleRequest(work_id=work_id, kind=pb.BUNDLE_KIND_ZIP), metadata=bearer("reader")
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [line for line in guarded.server.log_path.read_text().splitlines() if bundle.bundle_id in line]
        if lines:
            break
        time.sleep(0.1)
    assert lines and all(f" [reader] work={work_id}: " in line for line in lines), lines  # and the request's work


def test_tokens_rotate_without_a_restart(guarded: Guarded) -> None:
    new = "tok-rotated-" + uuid.uuid4().hex
    tokens = dict(TOKENS, rotated=(["read"], new))
    guarded.tokens_file.write_text(tokens_toml(tokens))
    request = pb.GetAssetRequest(asset_id=guarded.asset_id)
    deadline = time.monotonic() + 15
    while True:
        try:
            guarded.stub.GetAsset(request, metadata=(("authorization", f"Bearer {new}"),))
            break
        except grpc.RpcError as exc:
            assert exc.code() == UNAUTHENTICATED
            assert time.monotonic() < deadline, "the new token was never accepted"
            time.sleep(0.2)
    guarded.tokens_file.write_text("this is not TOML [")  # a broken file keeps the last good credentials
    deadline = time.monotonic() + 15
    while "not reloaded, keeping the previous credentials" not in guarded.server.log_path.read_text():
        guarded.stub.GetAsset(request, metadata=(("authorization", f"Bearer {new}"),))  # a call makes it look
        assert time.monotonic() < deadline, "the broken file was never read"
        time.sleep(0.2)
    guarded.stub.GetAsset(request, metadata=(("authorization", f"Bearer {new}"),))
    guarded.tokens_file.write_text(tokens_toml(TOKENS))


# --- limits ---------------------------------------------------------------------------------------


def test_jobs_per_principal_are_limited_with_retry_info(guarded: Guarded) -> None:
    request = pb.CreateDerivativesRequest(asset_ids=[guarded.asset_id])
    for _ in range(MAX_JOBS):
        guarded.stub.CreateDerivatives(request, metadata=bearer("quota"))
    err = expect_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, guarded.stub.CreateDerivatives, request, metadata=bearer("quota")
    )
    assert error_reason(err) == "TOO_MANY_JOBS"
    status = rpc_status.from_call(err)
    retry = error_details_pb2.RetryInfo()
    assert status is not None and any(d.Unpack(retry) for d in status.details)
    assert retry.retry_delay.seconds > 0
    guarded.stub.CreateDerivatives(request, metadata=bearer("writer"))  # another principal is not held up


def _nothing_left(g: Guarded, asset_id: str) -> None:
    settings = g.server.settings
    assert list(g.server.storage().list(settings.bucket_originals, asset_id + "/")) == []
    assert list((settings.data_path / "tmp").glob("upload-*")) == []
    expect_error(
        grpc.StatusCode.NOT_FOUND, g.stub.GetAsset, pb.GetAssetRequest(asset_id=asset_id), metadata=bearer("all")
    )


def test_originals_over_the_byte_limit_are_refused_and_nothing_is_stored(guarded: Guarded) -> None:
    big = os.urandom(MAX_ORIGINAL + 1)
    asset_id = "big-" + uuid.uuid4().hex[:8]
    # Streamed: refused as the stream passes the limit.
    header = pb.UploadOriginalHeader(asset_id=asset_id, content_type="application/octet-stream")
    chunks = [pb.UploadOriginalRequest(chunk=big[i : i + 65536]) for i in range(0, len(big), 65536)]
    err = expect_error(
        INVALID,
        guarded.stub.UploadOriginal,
        iter([pb.UploadOriginalRequest(header=header), *chunks]),
        metadata=bearer("all"),
    )
    assert error_reason(err) == "ORIGINAL_TOO_LARGE" and "chunk" in field_violations(err)
    # Inline.
    request = pb.PutAssetRequest(asset_id=asset_id, data=big, content_type="application/octet-stream")
    err = expect_error(INVALID, guarded.stub.PutAsset, request, metadata=bearer("all"))
    assert error_reason(err) == "ORIGINAL_TOO_LARGE" and "data" in field_violations(err)
    # Copied from an import source.
    storage = guarded.server.storage()
    storage.ensure_buckets(("incoming",))
    storage.put("incoming", "big.bin", io.BytesIO(big), length=len(big))
    request = pb.PutAssetRequest(asset_id=asset_id, storage_ref=pb.StorageRef(bucket="incoming", key="big.bin"))
    err = expect_error(INVALID, guarded.stub.PutAsset, request, metadata=bearer("all"))
    assert error_reason(err) == "ORIGINAL_TOO_LARGE" and "storage_ref" in field_violations(err)
    _nothing_left(guarded, asset_id)


def test_a_derivative_body_over_its_limit_is_refused(guarded: Guarded) -> None:
    header = pb.UpdateDerivativeHeader(asset_id=guarded.asset_id, key="custom", content_type="image/jpeg")
    body = os.urandom(MAX_DERIVATIVE + 1)
    messages = [pb.UpdateDerivativeRequest(header=header), pb.UpdateDerivativeRequest(chunk=body)]
    err = expect_error(INVALID, guarded.stub.UpdateDerivative, iter(messages), metadata=bearer("all"))
    assert error_reason(err) == "DERIVATIVE_TOO_LARGE"
    reply = guarded.stub.GetAsset(pb.GetAssetRequest(asset_id=guarded.asset_id), metadata=bearer("all"))
    assert "custom" not in {d.key for d in reply.derivatives}


def test_hostile_requests_get_a_short_invalid_argument(guarded: Guarded) -> None:
    """10 KB ids, 100,000 bogus keys, 100,001 members: INVALID_ARGUMENT with a small trailer, never
    RESOURCE_EXHAUSTED "Stream removed" (what a client sees when the trailer passes its ~16 KB limit)."""
    stub, all_ = guarded.stub, bearer("all")
    long_id = "a" * 10_000
    cases: list[tuple[Callable[..., Any], Any]] = [
        (stub.GetAsset, pb.GetAssetRequest(asset_id=long_id)),
        (stub.CreateDerivatives, pb.CreateDerivativesRequest(asset_ids=[long_id] * 1000)),
        (stub.CreateDerivatives, pb.CreateDerivativesRequest(asset_ids=[guarded.asset_id], only=["k" * 100] * 100_000)),
        (stub.CreateDerivatives, pb.CreateDerivativesRequest(asset_ids=[guarded.asset_id], only=["x" * 10_000] * 10)),
        (stub.PutWork, pb.PutWorkRequest(work_id="w", title="t", member_asset_ids=["-bad"] * 100_001)),
        (stub.PutWork, pb.PutWorkRequest(work_id="w", title="t", member_asset_ids=["-bad"] * 1000)),
        (stub.PutAsset, pb.PutAssetRequest(asset_id="a1", data=b"x", content_type="x" * 10_000)),
        (
            stub.PutAsset,
            pb.PutAssetRequest(asset_id="a1", storage_ref=pb.StorageRef(bucket="incoming", key="k" * 10_000)),
        ),
    ]
    for method, request in cases:
        err = expect_error(INVALID, method, request, metadata=all_)
        status = rpc_status.from_call(err)
        assert status is not None and len(status.SerializeToString()) < 4096, len(status.SerializeToString())
        assert len(field_violations(err)) <= 21
    # And the server logged no giant line.
    assert max(len(line) for line in guarded.server.log_path.read_text().splitlines()) < 4096


# --- TLS and mutual TLS ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def authority(work_dir: Path) -> Authority:
    directory = work_dir / "pki"
    directory.mkdir(exist_ok=True)
    return Authority(directory)


def _tls_server(postgres: Postgres, work_dir: Path, name: str, authority: Authority, **extra: str) -> ServerProcess:
    issued = authority.issue("server.test", server=True)
    env = server_env(
        "file",
        postgres.new_database(name),
        work_dir / f"data-{name}",
        None,
        DERIVATIVES_TLS_CERT=str(issued.cert),
        DERIVATIVES_TLS_KEY=str(issued.key),
        DERIVATIVES_WORKERS="0",
        **extra,
    )
    client = authority.issue("harness")  # the harness's own health checks present a certificate too
    credentials = grpc.ssl_channel_credentials(
        authority.pem.read_bytes(), client.key.read_bytes(), client.cert.read_bytes()
    )
    return ServerProcess(env, work_dir / f"server-{name}.log", credentials=credentials).start()


def test_tls_with_bearer_tokens(postgres: Postgres, work_dir: Path, authority: Authority) -> None:
    tokens_file = work_dir / "tokens-tls.toml"
    tokens_file.write_text(tokens_toml({"reader": TOKENS["reader"]}))
    server = _tls_server(
        postgres, work_dir, "tls", authority, DERIVATIVES_TOKENS_FILE=str(tokens_file), DERIVATIVES_REFLECTION="false"
    )
    try:
        from client.client import Client, ClientError

        with Client(server.address, token=TOKENS["reader"][1], ca_file=str(authority.pem)) as client:
            assert list(client.list_asset_ids()) == []
            with pytest.raises(ClientError) as info:
                client.get_asset("nothing")
            assert info.value.code == grpc.StatusCode.NOT_FOUND and info.value.reason == "ASSET_NOT_FOUND"
        with Client(server.address, ca_file=str(authority.pem)) as client, pytest.raises(ClientError) as info:
            client.get_asset("nothing")
        assert info.value.code == UNAUTHENTICATED and info.value.reason == "CREDENTIALS_MISSING"
        with Client(server.address, token=TOKENS["reader"][1]) as client, pytest.raises(ClientError) as info:
            client.get_asset("nothing")  # plaintext to a TLS port: no connection
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        header = f"authorization: Bearer {TOKENS['reader'][1]}"
        out = grpcurl(
            server,
            "derivatives.v1.DerivativeService/ListAssets",
            data={},
            options=(
                *("-cacert", str(authority.pem), "-servername", "server.test", "-H", header),
                # No reflection on this server: grpcurl reads the proto files.
                *("-import-path", str(ROOT / "protos"), "-import-path", str(ROOT / "third_party" / "protos")),
                *("-proto", "derivatives/v1/derivatives.proto"),
            ),
        )
        assert out.returncode == 0, out.stderr
        # Reflection turned off: grpcurl needs the proto files then.
        listed = grpcurl(server, "list", options=("-cacert", str(authority.pem), "-servername", "server.test"))
        assert listed.returncode != 0 and "reflection" in listed.stderr.lower(), listed.stderr
    finally:
        assert server.stop() == 0, server.tail()


def test_mutual_tls_with_certificate_subjects(postgres: Postgres, work_dir: Path, authority: Authority) -> None:
    tokens_file = work_dir / "tokens-mtls.toml"
    subjects = {"ingest": (["read", "write"], "ingest.example.org"), "harness": (["read"], "harness")}
    tokens_file.write_text(tokens_toml({}, subjects))
    server = _tls_server(
        postgres,
        work_dir,
        "mtls",
        authority,
        DERIVATIVES_TOKENS_FILE=str(tokens_file),
        DERIVATIVES_TLS_CLIENT_CA=str(authority.pem),
    )
    try:
        from client.client import Client, ClientError

        ingest, stranger = authority.issue("ingest.example.org"), authority.issue("stranger.example.org")
        ca = str(authority.pem)
        with Client(server.address, ca_file=ca, cert_file=str(ingest.cert), key_file=str(ingest.key)) as client:
            asset = client.put_asset("m1", images.png(32, 32), skip_derivatives=True)
            assert asset.asset_id == "m1"
            with pytest.raises(grpc.RpcError) as raw:  # the client has no DeleteAsset: the stub, with its metadata
                client.stub.DeleteAsset(pb.DeleteAssetRequest(asset_id="m1"), metadata=client.metadata)
            assert raw.value.code() == DENIED and error_reason(raw.value) == "SCOPE_REQUIRED"
        with Client(server.address, ca_file=ca, cert_file=str(stranger.cert), key_file=str(stranger.key)) as client:
            with pytest.raises(ClientError) as info:
                client.get_asset("m1")
            assert (info.value.code, info.value.reason) == (UNAUTHENTICATED, "CREDENTIALS_INVALID")
        with Client(server.address, ca_file=ca) as client, pytest.raises(ClientError) as info:
            client.get_asset("m1")  # no client certificate: the handshake fails
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        assert server.stop() == 0, server.tail()


# --- refusals off loopback ------------------------------------------------------------------------


def _start_off_loopback(work_dir: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DERIVATIVES_", "S3_", "DATABASE_URL"))}
    env.update(DERIVATIVES_LISTEN=f"0.0.0.0:{free_port()}", DERIVATIVES_DATA_DIR=str(work_dir / "data-refused"))
    env.update(extra)
    return subprocess.run([sys.executable, "-m", "server"], env=env, capture_output=True, text=True, timeout=60)


def test_off_loopback_the_server_refuses_to_start_without_credentials(work_dir: Path) -> None:
    out = _start_off_loopback(work_dir)
    assert out.returncode != 0
    assert "refusing to serve" in out.stderr and "DERIVATIVES_TOKENS_FILE" in out.stderr
    assert "DERIVATIVES_AUTH=none" in out.stderr and "Traceback" not in out.stderr


def test_off_loopback_the_server_refuses_bearer_tokens_without_tls(work_dir: Path) -> None:
    tokens_file = work_dir / "tokens-refused.toml"
    tokens_file.write_text(tokens_toml({"reader": TOKENS["reader"]}))
    out = _start_off_loopback(work_dir, DERIVATIVES_TOKENS_FILE=str(tokens_file))
    assert out.returncode != 0
    assert "plaintext" in out.stderr and "DERIVATIVES_TLS_CERT" in out.stderr
    assert "DERIVATIVES_ALLOW_PLAINTEXT_TOKENS" in out.stderr and "Traceback" not in out.stderr
