"""An operator's view: the real grpcurl binary against the running server."""

from __future__ import annotations

import base64
import json
import uuid

from tests import images
from tests.harness import ServerProcess
from tests.helpers import grpcurl


def test_list_and_describe(server: ServerProcess) -> None:
    listed = grpcurl(server, "list")
    assert listed.returncode == 0, listed.stderr
    assert {"derivatives.v1.DerivativeService", "grpc.health.v1.Health"} <= set(listed.stdout.split())
    described = grpcurl(server, "describe", "derivatives.v1.DerivativeService")
    assert described.returncode == 0, described.stderr
    for rpc in ("PutAsset", "UploadOriginal", "CreateDerivatives", "FindOrCreateBundle", "WatchProgress"):
        assert f"rpc {rpc}" in described.stdout
    message = grpcurl(server, "describe", "derivatives.v1.Asset")
    assert "sha512" in message.stdout


def test_health_check_says_serving(server: ServerProcess) -> None:
    out = grpcurl(server, "grpc.health.v1.Health/Check")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"status": "SERVING"}


def test_put_asset_with_base64_then_get(server: ServerProcess) -> None:
    asset_id = f"curl-{uuid.uuid4().hex[:8]}"
    data = images.jpeg(321, 123)
    put = grpcurl(
        server,
        "derivatives.v1.DerivativeService/PutAsset",
        data={
            "asset_id": asset_id,
            "content_type": "image/jpeg",
            "data": base64.b64encode(data).decode(),
            "skip_derivatives": True,
        },
    )
    assert put.returncode == 0, put.stderr
    got = grpcurl(server, "derivatives.v1.DerivativeService/GetAsset", data={"asset_id": asset_id})
    assert got.returncode == 0, got.stderr
    asset = json.loads(got.stdout)
    assert asset["asset_id"] == asset_id
    assert len(asset["sha512"]) == 128
    assert (asset["size_bytes"], asset["width"], asset["height"]) == (str(len(data)), 321, 123)


def test_errors_show_code_and_field(server: ServerProcess) -> None:
    out = grpcurl(server, "derivatives.v1.DerivativeService/GetAsset", data={"asset_id": "no such"})
    assert out.returncode != 0
    assert "InvalidArgument" in out.stderr and "asset_id" in out.stderr
    assert "Traceback" not in out.stderr
