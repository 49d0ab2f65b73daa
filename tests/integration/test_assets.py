"""Asset RPCs through a real channel, against each storage backend."""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from derivatives.v1 import derivatives_pb2 as pb
from tests import images
from tests.harness import ServerProcess
from tests.helpers import Stub, error_reason, expect_error, field_violations

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def new_id(prefix: str = "a") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def put(stub: Stub, asset_id: str, data: bytes, content_type: str = "", **kw: Any) -> pb.Asset:
    return stub.PutAsset(
        pb.PutAssetRequest(asset_id=asset_id, content_type=content_type, data=data, skip_derivatives=True, **kw)
    )


def objects(server: ServerProcess, bucket: str, prefix: str) -> list[str]:
    return sorted(o.key for o in server.storage().list(bucket, prefix))


def test_put_and_get_round_trip(stub: Stub, server: ServerProcess) -> None:
    data = images.jpeg(640, 480)
    asset_id = new_id()
    put_reply = put(stub, asset_id, data, "image/jpeg", filename="scan.jpg")
    got = stub.GetAsset(pb.GetAssetRequest(asset_id=asset_id))
    for asset in (put_reply, got):
        assert asset.asset_id == asset_id
        assert asset.content_type == "image/jpeg"
        assert asset.sha512 == hashlib.sha512(data).hexdigest()
        assert asset.size_bytes == len(data)
        assert (asset.width, asset.height) == (640, 480)
        assert asset.filename == "scan.jpg"
    with server.storage().open(got.original.bucket, got.original.key) as fh:
        assert fh.read() == data


@pytest.mark.parametrize(
    ("maker", "content_type", "size"),
    [
        (images.png, "image/png", (320, 200)),
        (images.tiff, "image/tiff", (320, 200)),
        (images.webp, "image/webp", (320, 200)),
    ],
)
def test_formats_are_sniffed_without_a_declaration(
    stub: Stub, maker: Callable[[], bytes], content_type: str, size: tuple[int, int]
) -> None:
    asset = put(stub, new_id(), maker())
    assert asset.content_type == content_type
    assert (asset.width, asset.height) == size


def test_replacing_the_original_deletes_the_old_bytes(stub: Stub, server: ServerProcess) -> None:
    asset_id = new_id()
    first = put(stub, asset_id, images.jpeg(300, 200))
    second = put(stub, asset_id, images.png(100, 50))
    assert second.sha512 != first.sha512
    assert (second.content_type, second.width, second.height) == ("image/png", 100, 50)
    assert second.created_at == first.created_at
    assert objects(server, second.original.bucket, f"{asset_id}/") == [second.original.key]


def test_same_bytes_again_keep_the_stored_original(stub: Stub, server: ServerProcess) -> None:
    asset_id = new_id()
    data = images.jpeg(200, 100)
    first = put(stub, asset_id, data)
    again = put(stub, asset_id, data)
    assert again.original.key == first.original.key
    assert objects(server, first.original.bucket, f"{asset_id}/") == [first.original.key]


def test_upload_original_streams_chunks(stub: Stub) -> None:
    data = images.tiff(900, 700)
    asset_id = new_id()

    def messages() -> Iterator[pb.UploadOriginalRequest]:
        yield pb.UploadOriginalRequest(
            header=pb.UploadOriginalHeader(
                asset_id=asset_id, skip_derivatives=True, expected_sha512=hashlib.sha512(data).hexdigest()
            )
        )
        for i in range(0, len(data), 64 * 1024):
            yield pb.UploadOriginalRequest(chunk=data[i : i + 64 * 1024])

    asset = stub.UploadOriginal(messages())
    assert (asset.content_type, asset.size_bytes, asset.width, asset.height) == ("image/tiff", len(data), 900, 700)


def test_upload_original_checks_expected_sha_and_stores_nothing(stub: Stub, server: ServerProcess) -> None:
    asset_id = new_id()
    header = pb.UploadOriginalHeader(asset_id=asset_id, expected_sha512="0" * 128)
    err = expect_error(
        INVALID,
        stub.UploadOriginal,
        iter([pb.UploadOriginalRequest(header=header), pb.UploadOriginalRequest(chunk=images.jpeg(50, 50))]),
    )
    assert "header.expected_sha512" in field_violations(err)
    expect_error(grpc.StatusCode.NOT_FOUND, stub.GetAsset, pb.GetAssetRequest(asset_id=asset_id))
    assert objects(server, server.settings.bucket_originals, f"{asset_id}/") == []


def test_upload_original_names_the_header_field_of_a_wrong_content_type(stub: Stub) -> None:
    """Core says `content_type`; a streamed upload carries it in its header, and the error says so."""
    header = pb.UploadOriginalHeader(asset_id=new_id(), content_type="image/png")
    err = expect_error(
        INVALID,
        stub.UploadOriginal,
        iter([pb.UploadOriginalRequest(header=header), pb.UploadOriginalRequest(chunk=images.jpeg(50, 50))]),
    )
    assert "declared image/png but the bytes are image/jpeg" in field_violations(err)["header.content_type"]
    assert err.details().startswith("header.content_type: ")


def test_upload_original_needs_a_header_first(stub: Stub) -> None:
    err = expect_error(INVALID, stub.UploadOriginal, iter([pb.UploadOriginalRequest(chunk=b"abc")]))
    assert "header" in field_violations(err)
    err = expect_error(INVALID, stub.UploadOriginal, iter([]))
    assert "header" in field_violations(err)


def test_put_from_storage_ref_copies_from_an_import_source(stub: Stub, server: ServerProcess) -> None:
    storage = server.storage()
    storage.ensure_buckets(("incoming", "staging"))
    data = images.png(64, 32)
    storage.put("incoming", "scans/scan-1.png", io.BytesIO(data), length=len(data))
    asset = stub.PutAsset(
        pb.PutAssetRequest(
            asset_id=new_id(),
            storage_ref=pb.StorageRef(bucket="incoming", key="scans/scan-1.png"),
            skip_derivatives=True,
        )
    )
    assert (asset.content_type, asset.sha512) == ("image/png", hashlib.sha512(data).hexdigest())
    assert storage.stat("incoming", "scans/scan-1.png") is not None  # the caller keeps its object
    err = expect_error(
        grpc.StatusCode.NOT_FOUND,
        stub.PutAsset,
        pb.PutAssetRequest(asset_id=new_id(), storage_ref=pb.StorageRef(bucket="incoming", key="scans/nothing.png")),
    )
    assert error_reason(err) == "SOURCE_NOT_FOUND"
    # A "directory" (a key prefix) is not an object either.
    directory = pb.StorageRef(bucket="incoming", key="scans")
    expect_error(grpc.StatusCode.NOT_FOUND, stub.PutAsset, pb.PutAssetRequest(asset_id=new_id(), storage_ref=directory))
    # bucket/prefix: only keys under that folder.
    storage.put("staging", "allowed/a.png", io.BytesIO(data), length=len(data))
    storage.put("staging", "allowed-not/a.png", io.BytesIO(data), length=len(data))
    ref = pb.StorageRef(bucket="staging", key="allowed/a.png")
    stub.PutAsset(pb.PutAssetRequest(asset_id=new_id(), storage_ref=ref, skip_derivatives=True))
    ref = pb.StorageRef(bucket="staging", key="allowed-not/a.png")
    err = expect_error(
        grpc.StatusCode.PERMISSION_DENIED, stub.PutAsset, pb.PutAssetRequest(asset_id=new_id(), storage_ref=ref)
    )
    assert error_reason(err) == "SOURCE_NOT_ALLOWED"


def test_storage_ref_cannot_copy_the_services_own_objects(stub: Stub, server: ServerProcess) -> None:
    """Another asset's original or derivative, or a bundle: PERMISSION_DENIED, before storage is asked."""
    first = put(stub, new_id(), images.png(64, 32), "image/png")
    settings = server.settings
    original = server.storage().list(settings.bucket_originals, first.asset_id + "/")
    key = next(iter(original)).key
    for bucket, target in ((settings.bucket_originals, key), (settings.bucket_bundles, "w/x.pdf")):
        ref = pb.StorageRef(bucket=bucket, key=target)
        err = expect_error(
            grpc.StatusCode.PERMISSION_DENIED, stub.PutAsset, pb.PutAssetRequest(asset_id=new_id(), storage_ref=ref)
        )
        assert error_reason(err) == "SOURCE_NOT_ALLOWED"
        assert "own buckets" in (err.details() or "")


def test_storage_ref_keys_are_validated_before_any_storage_call(stub: Stub) -> None:
    for key, words in (("../../etc/passwd", "segments"), ("k" * 10_000, "at most 1024 bytes"), ("a\nb", "control")):
        ref = pb.StorageRef(bucket="incoming", key=key)
        err = expect_error(INVALID, stub.PutAsset, pb.PutAssetRequest(asset_id=new_id(), storage_ref=ref))
        assert words in field_violations(err)["storage_ref.key"]
        assert len(err.details() or "") < 300


def test_inline_data_of_40_mib_is_accepted(stub: Stub) -> None:
    data = b"\x00" * (40 * 1024 * 1024)
    asset = put(stub, new_id(), data, "application/octet-stream")
    assert asset.size_bytes == len(data)
    assert (asset.width, asset.height) == (0, 0)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.PutAssetRequest(asset_id="", data=b"x", content_type="text/plain"), "asset_id"),
        (pb.PutAssetRequest(asset_id="has space", data=b"x", content_type="text/plain"), "asset_id"),
        (pb.PutAssetRequest(asset_id="../x", data=b"x", content_type="text/plain"), "asset_id"),
        (pb.PutAssetRequest(asset_id="ok-id"), "source"),
        (pb.PutAssetRequest(asset_id="ok-id", data=b"plain words"), "content_type"),
        (pb.PutAssetRequest(asset_id="ok-id", data=b"plain words", content_type="not a type"), "content_type"),
        (pb.PutAssetRequest(asset_id="ok-id", data=images.jpeg(20, 20), content_type="image/png"), "content_type"),
        (pb.PutAssetRequest(asset_id="ok-id", data=b"", content_type="image/jpeg"), "content_type"),
        (pb.PutAssetRequest(asset_id="ok-id", data=b"plain words", content_type="image/tiff"), "content_type"),
    ],
)
def test_bad_put_requests_name_the_field(
    stub: Stub, server: ServerProcess, request_: pb.PutAssetRequest, field: str
) -> None:
    err = expect_error(INVALID, stub.PutAsset, request_)
    assert field in field_violations(err)
    if request_.asset_id == "ok-id":  # a failed put leaves no object and no row
        expect_error(grpc.StatusCode.NOT_FOUND, stub.GetAsset, pb.GetAssetRequest(asset_id="ok-id"))
        assert objects(server, server.settings.bucket_originals, "ok-id/") == []


def test_non_image_with_a_declared_type_is_stored(stub: Stub) -> None:
    asset = put(stub, new_id(), b"", "application/octet-stream")
    assert (asset.size_bytes, asset.content_type) == (0, "application/octet-stream")
    asset = put(stub, new_id(), images.jpeg(40, 40)[:300], "image/jpg")  # truncated but still a JPEG
    assert asset.content_type == "image/jpeg"


def test_get_and_delete_unknown_asset(stub: Stub) -> None:
    expect_error(grpc.StatusCode.NOT_FOUND, stub.GetAsset, pb.GetAssetRequest(asset_id="never-was"))
    expect_error(grpc.StatusCode.NOT_FOUND, stub.DeleteAsset, pb.DeleteAssetRequest(asset_id="never-was"))
    assert "asset_id" in field_violations(expect_error(INVALID, stub.GetAsset, pb.GetAssetRequest()))


def test_delete_removes_row_and_bytes(stub: Stub, server: ServerProcess) -> None:
    asset_id = new_id()
    asset = put(stub, asset_id, images.jpeg(100, 100))
    stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=asset_id))
    expect_error(grpc.StatusCode.NOT_FOUND, stub.GetAsset, pb.GetAssetRequest(asset_id=asset_id))
    assert objects(server, asset.original.bucket, f"{asset_id}/") == []
