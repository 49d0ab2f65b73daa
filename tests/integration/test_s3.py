"""The S3 backend against a real S3 server: SeaweedFS (`weed mini`, the session's `s3` endpoint).

Multipart uploads with parts over 5 MiB, ranged reads across their parts, presigned downloads whose
Content-Disposition names the file (and whose signature the server checks), and the bundle bucket's
lifecycle rule. Nothing here needs moto.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import math
import random
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest

from core.storage import PART_SIZE, S3Storage, attachment_disposition, chunk_stream
from derivatives.v1 import derivatives_pb2 as pb
from tests import images
from tests.harness import S3Endpoint, ServerProcess
from tests.helpers import ZIP, Stub, make_work, read_bundle, wait_bundle

MIB = 1024 * 1024
# Three parts as the backend cuts an upload of unknown length: PART_SIZE, PART_SIZE, and the rest.
DATA = random.Random(11).randbytes(2 * PART_SIZE + 3 * MIB + 17)
KEY = "works/w1/zip_abc.zip"


def new_bucket(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def multipart_etag(data: bytes, part_size: int) -> str:
    """S3's ETag of a multipart object: the MD5 of its parts' MD5s, a dash, the number of parts."""
    parts = [data[i : i + part_size] for i in range(0, len(data), part_size)]
    return f"{hashlib.md5(b''.join(hashlib.md5(p).digest() for p in parts)).hexdigest()}-{len(parts)}"


def in_pieces(data: bytes, size: int = 1_000_003) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


@pytest.fixture(scope="module")
def uploaded(s3: S3Endpoint) -> tuple[S3Storage, str]:
    """DATA streamed into a fresh bucket with no length given, as a bundle is: a multipart upload."""
    storage, bucket = s3.storage(), new_bucket("multipart")
    storage.ensure_buckets((bucket,))
    stream, counter = chunk_stream(in_pieces(DATA))
    storage.put(bucket, KEY, stream)
    assert counter.total == len(DATA)
    return storage, bucket


def test_an_upload_of_unknown_length_is_multipart_with_parts_over_5_mib(uploaded: tuple[S3Storage, str]) -> None:
    storage, bucket = uploaded
    assert PART_SIZE > 5 * MIB  # S3's smallest part (but the last)
    info = storage.client.stat_object(bucket, KEY)
    assert info.size == len(DATA)
    # The ETag proves the object was assembled from parts of exactly PART_SIZE bytes (and the rest).
    assert (info.etag or "").strip('"') == multipart_etag(DATA, PART_SIZE)
    with storage.open(bucket, KEY) as fh:
        assert hashlib.sha256(fh.read()).digest() == hashlib.sha256(DATA).digest()


@pytest.mark.parametrize("offset", [1, PART_SIZE - 1, PART_SIZE, 2 * PART_SIZE + 1, len(DATA) - 1])
def test_ranged_reads_across_parts(uploaded: tuple[S3Storage, str], offset: int) -> None:
    storage, bucket = uploaded
    with storage.open(bucket, KEY, offset=offset) as fh:
        body = fh.read()
        response: Any = fh
    assert response.status == 206  # only the tail crossed the network
    assert response.headers["Content-Range"] == f"bytes {offset}-{len(DATA) - 1}/{len(DATA)}"
    assert body == DATA[offset:]


def test_a_stream_that_fails_after_a_part_leaves_no_object(uploaded: tuple[S3Storage, str]) -> None:
    storage, bucket = uploaded

    class WriterFailed(Exception):
        pass

    def chunks() -> Iterator[bytes]:
        yield from in_pieces(DATA[: PART_SIZE + 2 * MIB])  # the first part is sent
        raise WriterFailed

    stream, _ = chunk_stream(chunks())
    with pytest.raises(WriterFailed):
        storage.put(bucket, "broken.zip", stream)
    assert storage.stat(bucket, "broken.zip") is None
    assert storage.client._list_multipart_uploads(bucket, prefix="broken.zip").uploads == []  # aborted


def test_a_presigned_download_names_the_file_and_resumes(s3: S3Endpoint) -> None:
    storage, bucket = s3.storage(), new_bucket("presign")
    storage.ensure_buckets((bucket,))
    payload = DATA[:100_000]
    storage.put(bucket, KEY, io.BytesIO(payload), length=len(payload), content_type="application/zip")
    filename = "Briefe aus Zürich, 1916.zip"  # not ASCII: filename* carries it
    url = storage.presign(bucket, KEY, expires=dt.timedelta(minutes=10), filename=filename)
    with urllib.request.urlopen(url, timeout=30) as response:  # plain HTTP, no credentials: the URL is the key
        assert response.status == 200
        assert response.headers["Content-Disposition"] == attachment_disposition(filename)
        assert response.read() == payload
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=1000-"}), timeout=30) as response:
        assert response.status == 206
        assert response.read() == payload[1000:]
    # The signature covers the disposition: another filename in the same URL is refused.
    forged = url.replace("filename", "filenamf", 1)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged, timeout=30)
    assert refused.value.code == 403


@pytest.mark.parametrize("server", ["s3"], indirect=True)
def test_a_bundle_past_one_part_is_multipart_and_downloads_by_its_url(stub: Stub, server: ServerProcess) -> None:
    page = images.jpeg(4000, 3000)  # ~2 MB, into the ZIP as it is
    count = math.ceil(1.2 * PART_SIZE / len(page))
    work_id, _ = make_work(stub, [page] * count)
    bundle = wait_bundle(stub, work_id, ZIP)
    assert bundle.status == pb.BUNDLE_STATUS_SUCCESS, bundle.error
    assert bundle.size_bytes > PART_SIZE
    storage = server.storage()
    assert isinstance(storage, S3Storage)
    (stored,) = storage.list(server.settings.bucket_bundles, f"{work_id}/")
    info = storage.client.stat_object(stored.bucket, stored.key)
    assert info.size == bundle.size_bytes
    assert (info.etag or "").strip('"').endswith("-2")  # streamed: two parts
    with urllib.request.urlopen(bundle.url, timeout=60) as response:
        assert response.headers["Content-Disposition"] == attachment_disposition(bundle.filename)
        data = response.read()
    assert len(data) == bundle.size_bytes
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    assert len(archive.namelist()) == count + 1  # and about.txt
    offset = PART_SIZE + 5  # ReadBundle resumes with a ranged read, in the second part
    assert read_bundle(stub, bundle, offset=offset) == data[offset:]


@pytest.mark.parametrize("server", ["s3"], indirect=True)
def test_the_bundle_bucket_lifecycle_rule_is_stored_as_sent(server: ServerProcess) -> None:
    """SeaweedFS accepts the rule the service installs at start and returns it unchanged.

    Its lifecycle worker (run by `weed mini`'s admin, a scan every few minutes) applies such rules: an
    expiration date in the past removed an object within about 5 minutes. A rule in days cannot be watched
    expiring in a test, and it is only a backstop: the service's own reaper is the guarantee
    (tests/drills/test_bundles.py).
    """
    settings = server.settings
    storage = server.storage()
    assert isinstance(storage, S3Storage)
    config = storage.client.get_bucket_lifecycle(settings.bucket_bundles)
    assert config is not None
    (rule,) = config.rules
    assert rule.status == "Enabled"
    assert rule.expiration is not None and rule.abort_incomplete_multipart_upload is not None
    assert rule.expiration.days == max(1, math.ceil(settings.bundle_idle_seconds / 86400)) + 1
    assert rule.abort_incomplete_multipart_upload.days_after_initiation == 1
