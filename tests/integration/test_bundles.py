"""Whole-work bundles through the running service, on each storage backend."""

from __future__ import annotations

import io
import threading
import time
import urllib.request
import uuid
import zipfile

import grpc
import psycopg
import pypdf
import pytest

from derivatives.v1 import derivatives_pb2 as pb
from tests import images
from tests.harness import ServerProcess
from tests.helpers import (
    PDF,
    ZIP,
    Stub,
    expect_error,
    field_violations,
    grpcurl_stream,
    make_work,
    read_bundle,
    wait_bundle,
    wait_derivatives_created,
)


def test_pdf_has_one_page_per_member_in_order_and_metadata(stub: Stub, server: ServerProcess) -> None:
    sizes = [(1600, 1200), (1300, 2000), (900, 700), (2000, 1500)]  # one narrower than 1200: its JPEG serves
    originals = [images.jpeg(w, h) for w, h in sizes[:2]] + [images.jpeg(*sizes[2]), images.tiff(*sizes[3])]
    work_id, ids = make_work(stub, originals)
    bundle = wait_bundle(stub, work_id, PDF)
    assert bundle.status == pb.BUNDLE_STATUS_SUCCESS, bundle.error
    assert bundle.filename == f"letters_from_the_{work_id}_pdf.pdf"
    data = read_bundle(stub, bundle)
    assert len(data) == bundle.size_bytes
    pdf = pypdf.PdfReader(io.BytesIO(data))
    assert len(pdf.pages) == 4
    assert pdf.metadata is not None
    assert pdf.metadata.title == "Letters from the Front, 1916"
    assert pdf.metadata.author == "Science History Institute"
    expected_px = [(1200, 900), (1200, 1846), (900, 700), (1200, 900)]
    for page, (w, h) in zip(pdf.pages, expected_px, strict=True):
        assert (
            abs(float(page.mediabox.width) - w * 72 / 150) < 1 and abs(float(page.mediabox.height) - h * 72 / 150) < 2
        )
    assert [o.title for o in pdf.outline if not isinstance(o, list)] == [
        f"Page {i + 1} ({a})" for i, a in enumerate(ids)
    ]
    assert pdf.page_labels == ["1", "2", "3", "4"]
    if server.settings.storage == "s3":
        assert bundle.url and bundle.url_expires_at.seconds > time.time()
        with urllib.request.urlopen(bundle.url, timeout=30) as response:  # the presigned URL, on loopback
            assert response.read() == data
            assert f'filename="{bundle.filename}"' in response.headers["Content-Disposition"]


def test_zip_lists_every_member_in_order_plus_about(stub: Stub) -> None:
    jpeg = images.jpeg(800, 600)
    work_id, ids = make_work(stub, [jpeg, images.png(500, 400), jpeg])
    bundle = wait_bundle(stub, work_id, ZIP)
    assert bundle.status == pb.BUNDLE_STATUS_SUCCESS, bundle.error
    data = read_bundle(stub, bundle)
    archive = zipfile.ZipFile(io.BytesIO(data))
    names = archive.namelist()
    assert names == [f"{i + 1:03d}-letters_from_the_{work_id}_{i + 1}_{a}.jpg" for i, a in enumerate(ids)] + [
        "about.txt"
    ]
    assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
    assert archive.read(names[0]) == jpeg  # a JPEG original goes in untouched
    assert archive.read(names[1]).startswith(b"\xff\xd8")  # the PNG's full-size JPEG, made on the fly
    about = archive.read("about.txt").decode()
    assert "Letters from the Front, 1916" in about and work_id in about and "Prepared on" in about
    assert archive.comment.decode() == about
    assert archive.testzip() is None
    assert read_bundle(stub, bundle, offset=100) == data[100:]


def test_200_concurrent_requests_make_one_build(stub: Stub, server: ServerProcess) -> None:
    work_id, _ = make_work(stub, [images.jpeg(1500, 1000) for _ in range(3)])
    replies: list[pb.Bundle] = []
    errors: list[BaseException] = []
    start = threading.Barrier(20)

    def caller() -> None:
        try:
            with server.channel() as channel:
                s = server.stub(channel)
                start.wait()
                for _ in range(10):
                    replies.append(s.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=work_id, kind=PDF)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert len(replies) == 200 and len({r.bundle_id for r in replies}) == 1
    with psycopg.connect(server.env["DATABASE_URL"]) as conn:
        jobs = conn.execute(
            "SELECT count(*) FROM jobs WHERE kind = 'build_bundle' AND payload->>'bundle_id' = %s",
            (replies[0].bundle_id,),
        ).fetchone()
    assert jobs == (1,)
    assert wait_bundle(stub, work_id, PDF).status == pb.BUNDLE_STATUS_SUCCESS


def test_changed_member_gives_a_new_checksum_and_build(stub: Stub) -> None:
    work_id, ids = make_work(stub, [images.jpeg(700, 500), images.jpeg(600, 500)])
    first = wait_bundle(stub, work_id, ZIP)
    again = stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=work_id, kind=ZIP))
    assert (again.bundle_id, again.status) == (first.bundle_id, pb.BUNDLE_STATUS_SUCCESS)  # cached
    stub.PutAsset(pb.PutAssetRequest(asset_id=ids[1], data=images.jpeg(640, 480), skip_derivatives=True))
    second = wait_bundle(stub, work_id, ZIP)
    assert second.checksum != first.checksum and second.bundle_id != first.bundle_id
    assert second.status == pb.BUNDLE_STATUS_SUCCESS
    names = zipfile.ZipFile(io.BytesIO(read_bundle(stub, second))).namelist()
    assert len(names) == 3


def test_vanished_object_is_rebuilt(stub: Stub, server: ServerProcess) -> None:
    work_id, _ = make_work(stub, [images.jpeg(500, 400)])
    bundle = wait_bundle(stub, work_id, ZIP)
    with psycopg.connect(server.env["DATABASE_URL"]) as conn:
        bucket, key = conn.execute(
            "SELECT bucket, object_key FROM bundles WHERE bundle_id = %s", (bundle.bundle_id,)
        ).fetchone()  # type: ignore[misc]
    server.storage().delete(bucket, key)
    err = expect_error(grpc.StatusCode.FAILED_PRECONDITION, read_bundle, stub, bundle)
    assert "FindOrCreateBundle" in err.details()
    rebuilt = stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=work_id, kind=ZIP))
    assert rebuilt.bundle_id == bundle.bundle_id and rebuilt.status == pb.BUNDLE_STATUS_IN_PROGRESS
    assert wait_bundle(stub, work_id, ZIP).status == pb.BUNDLE_STATUS_SUCCESS
    assert server.storage().stat(bucket, key) is not None


def test_unrenderable_member_fails_the_build_naming_it(stub: Stub) -> None:
    # A truncated PNG: its header says 600 px wide, but no JPEG can be rendered from it.
    work_id, ids = make_work(stub, [images.jpeg(600, 400), images.png(600, 400)[:400]])
    bundle = wait_bundle(stub, work_id, PDF)
    assert bundle.status == pb.BUNDLE_STATUS_ERROR
    assert f"member 2 (asset {ids[1]})" in bundle.error and "Traceback" not in bundle.error
    assert bundle.url == ""
    expect_error(grpc.StatusCode.FAILED_PRECONDITION, read_bundle, stub, bundle)
    again = stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=work_id, kind=PDF))
    assert again.status == pb.BUNDLE_STATUS_ERROR  # not retried before DERIVATIVES_BUNDLE_ERROR_RETRY


@pytest.mark.parametrize("skip_derivatives", [False, True], ids=["its job ran", "never processed"])
def test_a_truncated_jpeg_member_fails_pdf_and_zip_alike(stub: Stub, skip_derivatives: bool) -> None:
    """One rule for both kinds: a JPEG original goes into a ZIP as it is only once a derivative of it
    was made; a truncated one cannot be, so the ZIP fails like the PDF, naming the member (whether
    its own derivatives job ran already, or the build has to try)."""
    good, broken = f"t-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    jpeg = images.jpeg(1600, 1200)
    stub.PutAsset(pb.PutAssetRequest(asset_id=good, data=jpeg, skip_derivatives=skip_derivatives))
    stub.PutAsset(pb.PutAssetRequest(asset_id=broken, data=jpeg[: len(jpeg) // 2], skip_derivatives=skip_derivatives))
    if not skip_derivatives:
        wait_derivatives_created(stub, good)
    work_id = f"w-{uuid.uuid4().hex[:8]}"
    stub.PutWork(pb.PutWorkRequest(work_id=work_id, title="Half a page", member_asset_ids=[good, broken]))
    for kind in (PDF, ZIP):
        bundle = wait_bundle(stub, work_id, kind)
        assert bundle.status == pb.BUNDLE_STATUS_ERROR, kind
        assert f"member 2 (asset {broken})" in bundle.error and "decodable" in bundle.error, bundle.error


def test_non_image_member_fails_with_its_name(stub: Stub) -> None:
    ok = f"b-{uuid.uuid4().hex[:8]}"
    text = f"b-{uuid.uuid4().hex[:8]}"
    stub.PutAsset(pb.PutAssetRequest(asset_id=ok, data=images.jpeg(300, 200), skip_derivatives=True))
    stub.PutAsset(pb.PutAssetRequest(asset_id=text, data=b"hello", content_type="text/plain", skip_derivatives=True))
    work_id = f"w-{uuid.uuid4().hex[:8]}"
    stub.PutWork(pb.PutWorkRequest(work_id=work_id, title="Mixed", member_asset_ids=[ok, text]))
    bundle = wait_bundle(stub, work_id, ZIP)
    assert bundle.status == pb.BUNDLE_STATUS_ERROR
    assert f"member 2 (asset {text})" in bundle.error and "text/plain" in bundle.error
    events = list(stub.WatchProgress(pb.WatchProgressRequest(bundle_id=bundle.bundle_id), timeout=30))
    assert events[-1].stage == pb.STAGE_FAILED and text in events[-1].error.message


def test_bundle_bad_input(stub: Stub) -> None:
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        stub.FindOrCreateBundle,
        pb.FindOrCreateBundleRequest(work_id="no-such-work", kind=PDF),
    )
    work_id = f"w-{uuid.uuid4().hex[:8]}"
    stub.PutWork(pb.PutWorkRequest(work_id=work_id, title="Empty"))
    expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        stub.FindOrCreateBundle,
        pb.FindOrCreateBundleRequest(work_id=work_id, kind=ZIP),
    )
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, stub.FindOrCreateBundle, pb.FindOrCreateBundleRequest(work_id=work_id)
    )
    assert "kind" in field_violations(err)
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.FindOrCreateBundle,
        pb.FindOrCreateBundleRequest(work_id=work_id, kind=7),  # type: ignore[arg-type]  # no such kind: on purpose
    )
    assert "kind" in field_violations(err)
    expect_error(
        grpc.StatusCode.NOT_FOUND, lambda: list(stub.ReadBundle(pb.ReadBundleRequest(bundle_id=str(uuid.uuid4()))))
    )
    assert "bundle_id" in field_violations(
        expect_error(
            grpc.StatusCode.INVALID_ARGUMENT, lambda: list(stub.ReadBundle(pb.ReadBundleRequest(bundle_id="x")))
        )
    )


def test_grpcurl_watches_a_bundle_build_to_completion(stub: Stub, server: ServerProcess) -> None:
    work_id, _ = make_work(stub, [images.tiff(1400, 1000) for _ in range(3)])
    bundle = stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=work_id, kind=PDF))
    events = grpcurl_stream(server, "WatchProgress", {"bundle_id": bundle.bundle_id})
    assert events[0].get("snapshot") is True
    final = events[-1]
    assert final["stage"] == "STAGE_SUCCEEDED" and final["bundle"]["status"] == "BUNDLE_STATUS_SUCCESS"
    assert final["bundle"]["filename"].endswith(".pdf")
