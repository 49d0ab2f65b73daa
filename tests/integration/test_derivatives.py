"""Per-asset derivatives through the running service, on each storage backend."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from derivatives.v1 import derivatives_pb2 as pb
from tests import images
from tests.harness import ServerProcess
from tests.helpers import Stub, expect_error, field_violations, wait_derivatives_created, wait_job

THUMBS = {
    "thumb_mini": 54,
    "thumb_mini_2x": 108,
    "thumb_standard": 208,
    "thumb_standard_2x": 416,
    "thumb_large": 525,
    "thumb_large_2x": 1050,
}
DOWNLOADS = {"download_medium": 1200, "download_large": 2880}


def new_id(prefix: str = "d") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def put(stub: Stub, data: bytes, content_type: str = "", skip: bool = True, asset_id: str = "") -> pb.Asset:
    return stub.PutAsset(
        pb.PutAssetRequest(asset_id=asset_id or new_id(), data=data, content_type=content_type, skip_derivatives=skip)
    )


def by_key(asset: pb.Asset) -> dict[str, pb.Derivative]:
    return {d.key: d for d in asset.derivatives}


def test_definitions_are_listed(stub: Stub) -> None:
    defs = stub.ListDerivativeDefinitions(pb.ListDerivativeDefinitionsRequest()).definitions
    keys = {d.key for d in defs}
    assert set(THUMBS) | set(DOWNLOADS) | {"download_full"} == keys
    mini = [d for d in defs if d.key == "thumb_mini"]
    assert {d.transformer for d in mini} == {"jpeg", "pdf_page_jpeg"}
    assert all(d.thumbnail_mode and d.max_width == 54 and d.quality == 85 and d.bucket for d in mini)


@pytest.mark.parametrize(
    ("maker", "size", "full"),
    [
        (lambda: images.jpeg(3000, 2000), (3000, 2000), False),
        (lambda: images.tiff16(3000, 2000), (3000, 2000), True),
        (lambda: images.png_rgba(1500, 1000), (1500, 1000), True),
        (lambda: images.tiff(1300, 900, bands=1), (1300, 900), True),
    ],
    ids=["jpeg", "tiff16", "png-rgba", "tiff-gray"],
)
def test_every_default_derivative_is_made_with_the_right_size(
    stub: Stub, server: ServerProcess, maker: Callable[[], bytes], size: tuple[int, int], full: bool
) -> None:
    asset = put(stub, maker(), skip=False)  # the put itself queues the default set
    asset = wait_derivatives_created(stub, asset.asset_id)
    made = by_key(asset)
    width, height = size
    expected = {k: w for k, w in {**THUMBS, **DOWNLOADS}.items() if w < width}
    if full:
        expected["download_full"] = width
    assert set(made) == set(expected)
    storage = server.storage()
    for key, w in expected.items():
        d = made[key]
        assert (d.width, d.content_type) == (w, "image/jpeg")
        assert abs(d.height - round(height * w / width)) <= 1
        assert d.original_sha512 == asset.sha512
        assert d.filename == f"{asset.asset_id}_{key}.jpg"
        assert d.location.key.startswith(f"{asset.asset_id}/{key}/")
        with storage.open(d.location.bucket, d.location.key) as fh:
            body = fh.read()
        assert (len(body), hashlib.sha512(body).hexdigest()) == (d.size_bytes, d.sha512)
        if server.settings.storage == "s3":
            assert d.url.startswith("http") and "response-content-disposition" in d.url
    assert not asset.derivative_failures


def test_pdf_first_page_thumbnails(stub: Stub) -> None:
    asset = put(stub, images.pdf(pages=2), skip=False)
    assert asset.content_type == "application/pdf"
    asset = wait_derivatives_created(stub, asset.asset_id)
    made = by_key(asset)
    assert set(made) == set(THUMBS)
    for key, w in THUMBS.items():
        assert made[key].width == w
        assert abs(made[key].height - round(w * 792 / 612)) <= 1


def test_only_exclude_and_lazy(stub: Stub, server: ServerProcess) -> None:
    asset = put(stub, images.jpeg(1300, 1000))
    job = stub.CreateDerivatives(
        pb.CreateDerivativesRequest(
            asset_ids=[asset.asset_id], only=["thumb_mini", "thumb_large"], exclude=["thumb_large"]
        )
    )
    assert job.job_id and job.total == 1 and job.kind == pb.JOB_KIND_CREATE_DERIVATIVES
    assert wait_job(stub, job.job_id).stage == pb.STAGE_SUCCEEDED
    first = by_key(stub.GetAsset(pb.GetAssetRequest(asset_id=asset.asset_id)))
    assert set(first) == {"thumb_mini"}

    lazy = wait_job(
        stub, stub.CreateDerivatives(pb.CreateDerivativesRequest(asset_ids=[asset.asset_id], lazy=True)).job_id
    )
    assert (lazy.stage, lazy.done, lazy.total) == (pb.STAGE_SUCCEEDED, 1, 1)
    after_lazy = by_key(stub.GetAsset(pb.GetAssetRequest(asset_id=asset.asset_id)))
    assert after_lazy["thumb_mini"].location.key == first["thumb_mini"].location.key  # kept, not remade
    assert {"thumb_large", "download_medium"} <= set(after_lazy)

    wait_job(stub, stub.CreateDerivatives(pb.CreateDerivativesRequest(asset_ids=[asset.asset_id])).job_id)
    remade = by_key(stub.GetAsset(pb.GetAssetRequest(asset_id=asset.asset_id)))
    assert remade["thumb_mini"].location.key != first["thumb_mini"].location.key
    listed = {o.key for o in server.storage().list(remade["thumb_mini"].location.bucket, f"{asset.asset_id}/")}
    assert listed == {d.location.key for d in remade.values()}  # replaced bytes were deleted


def test_bad_originals_fail_with_reasons_and_others_finish(stub: Stub, server: ServerProcess) -> None:
    good = put(stub, images.jpeg(700, 500))
    truncated = put(stub, images.jpeg(700, 500)[:2000])
    garbage = put(stub, b"\xff\xd8\xff\xe0" + b"\x00garbage" * 100)
    bomb = put(stub, images.jpeg_claiming(60000, 60000))
    assert (bomb.width, bomb.height) == (60000, 60000)
    empty = put(stub, b"", "application/octet-stream")
    jp2 = put(stub, b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 64)
    ids = [good.asset_id, truncated.asset_id, garbage.asset_id, bomb.asset_id, empty.asset_id, jp2.asset_id]
    job = wait_job(stub, stub.CreateDerivatives(pb.CreateDerivativesRequest(asset_ids=ids, only=["thumb_mini"])).job_id)
    assert (job.stage, job.done, job.total) == (pb.STAGE_SUCCEEDED, 6, 6)
    reasons = {f.asset_id: f.reason for f in job.failures}
    assert set(reasons) == set(ids) - {good.asset_id}
    assert "pixels" in reasons[bomb.asset_id] and "limit" in reasons[bomb.asset_id]
    assert "application/octet-stream" in reasons[empty.asset_id]
    for reason in reasons.values():
        assert reason and "Traceback" not in reason and len(reason) <= 300
    shown = stub.GetAsset(pb.GetAssetRequest(asset_id=truncated.asset_id))
    assert [f.key for f in shown.derivative_failures] == ["thumb_mini"]
    assert shown.derivative_failures[0].reason == reasons[truncated.asset_id]
    assert not shown.derivatives_created
    _update(stub, truncated.asset_id, "thumb_mini", images.jpeg(54, 40))  # made elsewhere: the failure is cleared
    assert list(stub.GetAsset(pb.GetAssetRequest(asset_id=truncated.asset_id)).derivative_failures) == []
    assert by_key(stub.GetAsset(pb.GetAssetRequest(asset_id=good.asset_id)))["thumb_mini"].width == 54
    assert server.health() == "SERVING"
    again = put(stub, images.png(300, 300), skip=False)  # the pool still works
    wait_derivatives_created(stub, again.asset_id)


def test_create_derivatives_bad_input(stub: Stub) -> None:
    asset = put(stub, images.jpeg(100, 100))
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.CreateDerivatives,
        pb.CreateDerivativesRequest(asset_ids=[asset.asset_id], only=["thumb_nano"]),
    )
    violation = field_violations(err)["only[0]"]
    assert "thumb_nano" in violation and "thumb_mini" in violation  # lists the valid keys
    assert "asset_ids" in field_violations(
        expect_error(grpc.StatusCode.INVALID_ARGUMENT, stub.CreateDerivatives, pb.CreateDerivativesRequest())
    )
    err = expect_error(
        grpc.StatusCode.NOT_FOUND,
        stub.CreateDerivatives,
        pb.CreateDerivativesRequest(asset_ids=[asset.asset_id, "ghost-9"]),
    )
    assert "ghost-9" in err.details()
    assert "job_id" in field_violations(
        expect_error(grpc.StatusCode.INVALID_ARGUMENT, stub.GetJob, pb.GetJobRequest(job_id="x"))
    )
    expect_error(grpc.StatusCode.NOT_FOUND, stub.GetJob, pb.GetJobRequest(job_id=str(uuid.uuid4())))


def _update(stub: Stub, asset_id: str, key: str, data: bytes, **header: Any) -> pb.Derivative:
    messages = [pb.UpdateDerivativeRequest(header=pb.UpdateDerivativeHeader(asset_id=asset_id, key=key, **header))]
    messages += [pb.UpdateDerivativeRequest(chunk=data[i : i + 5000]) for i in range(0, len(data), 5000)]
    return stub.UpdateDerivative(iter(messages))


def test_update_and_remove_derivative(stub: Stub, server: ServerProcess) -> None:
    asset = put(stub, images.jpeg(400, 300))
    data = images.png(40, 30)
    made = _update(
        stub, asset.asset_id, "custom_png", data, metadata={"source": "ocr"}, expected_original_sha512=asset.sha512
    )
    assert (made.content_type, made.width, made.height, made.size_bytes) == ("image/png", 40, 30, len(data))
    assert made.filename == f"{asset.asset_id}_custom_png.png" and dict(made.metadata) == {"source": "ocr"}
    replaced = _update(stub, asset.asset_id, "custom_png", images.png(20, 10))
    storage = server.storage()
    assert storage.stat(made.location.bucket, made.location.key) is None  # old bytes gone
    assert by_key(stub.GetAsset(pb.GetAssetRequest(asset_id=asset.asset_id)))["custom_png"].sha512 == replaced.sha512

    before = {o.key for o in storage.list(made.location.bucket, f"{asset.asset_id}/")}
    err = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        _update,
        stub,
        asset.asset_id,
        "other",
        data,
        expected_original_sha512="a" * 128,
    )
    assert "not attached" in err.details()
    assert {o.key for o in storage.list(made.location.bucket, f"{asset.asset_id}/")} == before  # upload deleted
    bad = field_violations(
        expect_error(grpc.StatusCode.INVALID_ARGUMENT, _update, stub, asset.asset_id, "Bad Key", data)
    )
    assert "header.key" in bad
    expect_error(grpc.StatusCode.NOT_FOUND, _update, stub, "ghost-asset", "k", data)

    stub.RemoveDerivative(pb.RemoveDerivativeRequest(asset_id=asset.asset_id, key="custom_png"))
    assert storage.stat(replaced.location.bucket, replaced.location.key) is None
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        stub.RemoveDerivative,
        pb.RemoveDerivativeRequest(asset_id=asset.asset_id, key="custom_png"),
    )


def test_new_original_drops_old_derivatives(stub: Stub, server: ServerProcess) -> None:
    asset = wait_derivatives_created(stub, put(stub, images.jpeg(600, 400), skip=False).asset_id)
    old = [(d.location.bucket, d.location.key) for d in asset.derivatives]
    assert old
    replaced = put(stub, images.jpeg(500, 400), asset_id=asset.asset_id)
    assert list(replaced.derivatives) == [] and not replaced.derivatives_created
    storage = server.storage()
    assert all(storage.stat(b, k) is None for b, k in old)
