"""Work RPCs through a real channel."""

from __future__ import annotations

import uuid

import grpc

from derivatives.v1 import derivatives_pb2 as pb
from tests import images
from tests.helpers import Stub, expect_error, field_violations


def make_assets(stub: Stub, n: int) -> list[str]:
    ids = [f"m-{uuid.uuid4().hex[:10]}" for _ in range(n)]
    for asset_id in ids:
        stub.PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=images.jpeg(32, 32), skip_derivatives=True))
    return ids


def test_work_round_trip_keeps_order_and_replaces_members(stub: Stub) -> None:
    a, b, c = make_assets(stub, 3)
    work_id = f"w-{uuid.uuid4().hex[:10]}"
    put = stub.PutWork(
        pb.PutWorkRequest(work_id=work_id, title="Letters home", member_asset_ids=[c, a, b, a], creator="SHI")
    )
    assert list(put.member_asset_ids) == [c, a, b, a]
    got = stub.GetWork(pb.GetWorkRequest(work_id=work_id))
    assert (got.title, got.creator, list(got.member_asset_ids)) == ("Letters home", "SHI", [c, a, b, a])
    stub.PutWork(pb.PutWorkRequest(work_id=work_id, title="Letters", member_asset_ids=[b]))
    got = stub.GetWork(pb.GetWorkRequest(work_id=work_id))
    assert (got.title, list(got.member_asset_ids)) == ("Letters", [b])
    assert got.created_at == put.created_at


def test_work_errors(stub: Stub) -> None:
    (a,) = make_assets(stub, 1)
    expect_error(grpc.StatusCode.NOT_FOUND, stub.GetWork, pb.GetWorkRequest(work_id="no-such-work"))
    err = expect_error(
        grpc.StatusCode.NOT_FOUND,
        stub.PutWork,
        pb.PutWorkRequest(work_id="w1", title="t", member_asset_ids=[a, "ghost-1"]),
    )
    assert "ghost-1" in err.details()
    expect_error(grpc.StatusCode.NOT_FOUND, stub.GetWork, pb.GetWorkRequest(work_id="w1"))  # nothing half-saved
    violations = field_violations(
        expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            stub.PutWork,
            pb.PutWorkRequest(work_id="bad id", title=" ", member_asset_ids=["ok", ""]),
        )
    )
    assert {"work_id", "title", "member_asset_ids[1]"} <= set(violations)
    nul = field_violations(
        expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            stub.PutWork,
            pb.PutWorkRequest(work_id="w-nul", title="a\x00b", creator="c\x00"),
        )
    )
    assert {"title", "creator"} <= set(nul)


def test_member_asset_cannot_be_deleted(stub: Stub) -> None:
    (a,) = make_assets(stub, 1)
    work_id = f"w-{uuid.uuid4().hex[:10]}"
    stub.PutWork(pb.PutWorkRequest(work_id=work_id, title="t", member_asset_ids=[a]))
    err = expect_error(grpc.StatusCode.FAILED_PRECONDITION, stub.DeleteAsset, pb.DeleteAssetRequest(asset_id=a))
    assert work_id in err.details()
    stub.PutWork(pb.PutWorkRequest(work_id=work_id, title="t", member_asset_ids=[]))
    stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=a))
