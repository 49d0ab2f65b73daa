"""Ranged reads: `ObjectStorage.open(offset=)` and `read_object` on the filesystem and on S3 (SeaweedFS, loopback)."""

from __future__ import annotations

import asyncio
import io
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from core.config import load_settings
from core.storage import FileStorage, ObjectMissing, ObjectStorage, S3Storage, read_object
from tests.harness import S3_KEYS, S3Endpoint

BUCKET = "ranged"
KEY = "bundles/a.zip"
DATA = random.Random(7).randbytes(3 * 1024 * 1024 + 12345)  # ~3 MB, not a multiple of any chunk size
SIZE = len(DATA)
OFFSETS = [0, 1, 1024 * 1024 + 7, SIZE - 1, SIZE]


def collect(storage: ObjectStorage, offset: int, size: int) -> list[tuple[int, bytes]]:
    async def run() -> list[tuple[int, bytes]]:
        return [item async for item in read_object(storage, BUCKET, KEY, offset, size)]

    return asyncio.run(run())


def assert_tail(chunks: list[tuple[int, bytes]], offset: int, size: int) -> None:
    assert b"".join(chunk for _, chunk in chunks) == DATA[offset:]
    assert [o for o, _ in chunks] == list(range(offset, SIZE, size))
    assert all(0 < len(chunk) <= size for _, chunk in chunks)


# --- filesystem


@pytest.fixture
def files(tmp_path: Path) -> FileStorage:
    storage = FileStorage(tmp_path)
    storage.ensure_buckets((BUCKET,))
    storage.put(BUCKET, KEY, io.BytesIO(DATA))
    storage.put(BUCKET, "empty", io.BytesIO(b""))
    return storage


@pytest.mark.parametrize("offset", [*OFFSETS, SIZE + 10])
def test_file_open_at_offset(files: FileStorage, offset: int) -> None:
    with files.open(BUCKET, KEY, offset=offset) as fh:
        assert fh.read() == DATA[offset:]


def test_file_open_defaults_and_errors(files: FileStorage) -> None:
    with files.open(BUCKET, KEY) as fh:
        assert fh.read() == DATA
    with files.open(BUCKET, "empty") as fh:
        assert fh.read() == b""
    with pytest.raises(ObjectMissing), files.open(BUCKET, "nope", offset=5):
        pass
    with pytest.raises(ValueError), files.open(BUCKET, KEY, offset=-1):
        pass


@pytest.mark.parametrize("offset", OFFSETS)
def test_file_read_object_gives_the_tail(files: FileStorage, offset: int) -> None:
    assert_tail(collect(files, offset, 256 * 1024), offset, 256 * 1024)


# --- read_object's thread hand-off, with a storage that records what happens


class Recorder:
    """A storage whose stream logs opens, reads and closes, and can hold a read until released."""

    backend = "fake"

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.events: list[str] = []
        self.read_started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    @contextmanager
    def open(self, bucket: str, key: str, *, offset: int = 0) -> Iterator[BinaryIO]:
        self.events.append(f"open {offset}")
        stream = io.BytesIO(self.data[offset:])
        outer = self

        class Stream(io.BytesIO):
            def read(self, n: int | None = -1) -> bytes:
                outer.read_started.set()
                outer.release.wait(5)
                outer.events.append("read")
                return stream.read(n)

        try:
            yield Stream()
        finally:
            self.events.append("close")


def test_read_object_closes_when_the_consumer_stops_early() -> None:
    storage = Recorder(b"x" * 100)

    async def run() -> tuple[int, bytes]:
        gen: Any = read_object(storage, BUCKET, KEY, 10, 30)  # type: ignore[arg-type]  # an async generator
        first = await anext(gen)
        await gen.aclose()
        return first

    assert asyncio.run(run()) == (10, b"x" * 30)
    assert storage.events == ["open 10", "read", "close"]


def test_read_object_cancelled_mid_read_closes_after_the_read() -> None:
    storage = Recorder(b"x" * 100)
    storage.release.clear()

    async def consume() -> None:
        async for _ in read_object(storage, BUCKET, KEY, 0, 30):  # type: ignore[arg-type]
            pass

    async def run() -> None:
        task = asyncio.create_task(consume())
        assert await asyncio.to_thread(storage.read_started.wait, 5)
        task.cancel()  # the read is still blocked in its thread
        await asyncio.sleep(0.05)
        storage.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert storage.events == ["open 0", "read", "close"]  # closed once, after the read, no ValueError


# --- S3 (the session's SeaweedFS server on loopback)


@pytest.fixture(scope="module")
def s3_storage(s3: S3Endpoint) -> S3Storage:
    storage = s3.storage()
    storage.ensure_buckets((BUCKET,))
    storage.put(BUCKET, KEY, io.BytesIO(DATA), length=SIZE)
    storage.put(BUCKET, "empty", io.BytesIO(b""), length=0)
    return storage


@pytest.mark.parametrize("offset", OFFSETS)
def test_s3_open_at_offset_is_a_ranged_get(s3_storage: S3Storage, offset: int) -> None:
    with s3_storage.open(BUCKET, KEY, offset=offset) as fh:
        body = fh.read()
        response: Any = fh
    assert len(body) == SIZE - offset
    assert body == DATA[offset:]
    if 0 < offset < SIZE:  # the server sent only the tail: a partial response for exactly that range
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes {offset}-{SIZE - 1}/{SIZE}"
    elif offset == 0:  # unchanged: a plain GET
        assert response.status == 200
        assert "Content-Range" not in response.headers


@pytest.mark.parametrize(("key", "offset"), [(KEY, SIZE + 1), ("empty", 0), ("empty", 1)])
def test_s3_open_at_or_past_the_end_is_empty(s3_storage: S3Storage, key: str, offset: int) -> None:
    with s3_storage.open(BUCKET, key, offset=offset) as fh:
        assert fh.read() == b""


def test_s3_open_missing_object(s3_storage: S3Storage) -> None:
    for offset in (0, 5):
        with pytest.raises(ObjectMissing), s3_storage.open(BUCKET, "nope", offset=offset):
            pass


@pytest.mark.parametrize("offset", [0, 1024 * 1024 + 7, SIZE])
def test_s3_read_object_gives_the_tail(s3_storage: S3Storage, offset: int) -> None:
    assert_tail(collect(s3_storage, offset, 512 * 1024), offset, 512 * 1024)


def test_s3_endpoint_ignoring_the_range_still_gives_the_tail() -> None:
    """A 200 with the whole object for a ranged request: the head is skipped, never streamed as the tail."""
    closed: list[str] = []

    class WholeObject(io.BytesIO):
        status = 200

        def close(self) -> None:
            closed.append("close")

        def release_conn(self) -> None:
            closed.append("release")

    class Client:
        def get_object(self, bucket: str, key: str, offset: int = 0) -> WholeObject:
            return WholeObject(b"0123456789")

    storage = S3Storage(load_settings({"DERIVATIVES_STORAGE": "s3", "S3_ENDPOINT": "127.0.0.1:1", **S3_KEYS}))
    storage.client = Client()  # type: ignore[assignment]
    with storage.open(BUCKET, KEY, offset=5) as fh:
        assert fh.read() == b"56789"
    assert closed == ["close", "release"]
