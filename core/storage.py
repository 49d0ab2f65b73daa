"""Object storage: one small streaming interface, a filesystem and an S3 (minio SDK) backend.

The interface is synchronous: worker processes call it directly and the asyncio
server calls it through `asyncio.to_thread`. No method holds a whole object in
memory.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import logging
import os
import shutil
import threading
import uuid
from collections.abc import AsyncIterator, Generator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import quote

from core.config import Settings
from core.errors import FailedPrecondition, InvalidArgument, NotFound, Reason, Unavailable
from core.errors import quote as quoted
from core.ids import BUCKET_NAME
from core.lru import ExpiringLRU
from core.records import Location

log = logging.getLogger("derivatives.storage")

PART_SIZE = 16 * 1024 * 1024
MAX_KEY_BYTES = 1024  # S3's limit on an object key
CHUNK = 1024 * 1024


class StorageUnavailable(Unavailable):
    default_reason = Reason.STORAGE_UNAVAILABLE


class ObjectMissing(NotFound):
    default_reason = Reason.SOURCE_NOT_FOUND


@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    key: str
    size: int
    modified: float = 0.0  # POSIX time of the last write (0 when not asked for)


@dataclass(frozen=True)
class PartialUpload:
    """An upload that never completed: an S3 multipart upload, or a filesystem `.tmp-*` file."""

    bucket: str
    key: str  # the object it was to become (S3), or the temporary file's own key (filesystem)
    upload_id: str  # S3's id; "" on the filesystem
    started: float  # POSIX time


def check_location(bucket: str, key: str, prefix: str = "location") -> None:
    """Reject names that are not valid buckets or that could escape a filesystem root."""
    violations = []
    if not BUCKET_NAME.fullmatch(bucket or ""):
        violations.append((f"{prefix}.bucket", "must be a valid bucket name ([a-z0-9.-], 3-63 characters)"))
    parts = (key or "").split("/")
    if len((key or "").encode()) > MAX_KEY_BYTES:
        violations.append((f"{prefix}.key", f"at most {MAX_KEY_BYTES} bytes (UTF-8)"))
    elif not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        violations.append((f"{prefix}.key", "must be a relative object key without empty, '.' or '..' segments"))
    elif any(ord(c) < 32 or ord(c) == 127 for c in key):
        violations.append((f"{prefix}.key", "must not contain control characters"))
    if violations:
        raise InvalidArgument(violations)


def attachment_disposition(filename: str) -> str:
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"


class ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks: streams a generator into `put`."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buf:
            try:
                self._buf = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(target), len(self._buf))
        target[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        self.total += n
        return n


def chunk_stream(chunks: Iterator[bytes]) -> tuple[BinaryIO, ChunkReader]:
    """(a buffered reader for `put`, the raw reader that counts the bytes)."""
    raw = ChunkReader(chunks)
    return io.BufferedReader(raw, buffer_size=CHUNK), raw


def read_chunks(stream: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    while block := stream.read(size):
        yield block


class ObjectStorage(Protocol):
    backend: str

    def ensure_buckets(self, buckets: tuple[str, ...]) -> None: ...
    def ping(self) -> None: ...
    def put(self, bucket: str, key: str, stream: BinaryIO, *, length: int = -1, content_type: str = "") -> None: ...
    def put_file(self, bucket: str, key: str, path: Path, *, content_type: str = "") -> None: ...
    @contextmanager
    def open(self, bucket: str, key: str, *, offset: int = 0) -> Iterator[BinaryIO]:
        """The object's bytes from `offset` on; an offset at or past the end gives an empty stream."""
        ...

    def download(self, bucket: str, key: str, path: Path) -> None: ...
    def stat(self, bucket: str, key: str) -> ObjectInfo | None: ...
    def delete(self, bucket: str, key: str) -> None: ...
    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every complete object under `prefix`, in bytewise key order (S3's), without partial uploads."""
        ...

    def list_partial(self, bucket: str) -> Iterator[PartialUpload]: ...
    def abort_partial(self, upload: PartialUpload) -> None: ...
    def presign(
        self, bucket: str, key: str, *, expires: dt.timedelta, filename: str = "", signed_at: dt.datetime | None = None
    ) -> str: ...
    def expire_after(self, bucket: str, days: int) -> None: ...
    def local_path(self, bucket: str, key: str) -> Path | None: ...


class FileStorage:
    """Objects as files under `root/bucket/key`; writes land atomically by rename."""

    backend = "file"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, bucket: str, key: str) -> Path:
        check_location(bucket, key)
        return self.root / bucket / key

    def ensure_buckets(self, buckets: tuple[str, ...]) -> None:
        for bucket in buckets:
            (self.root / bucket).mkdir(parents=True, exist_ok=True)

    def ping(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"storage root {self.root}: {exc}") from exc
        if not os.access(self.root, os.W_OK):
            raise StorageUnavailable(f"storage root {self.root} is not a writable directory")

    def put(self, bucket: str, key: str, stream: BinaryIO, *, length: int = -1, content_type: str = "") -> None:
        target = self._path(bucket, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as out:
                shutil.copyfileobj(stream, out, CHUNK)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put_file(self, bucket: str, key: str, path: Path, *, content_type: str = "") -> None:
        with open(path, "rb") as fh:
            self.put(bucket, key, fh, content_type=content_type)

    @contextmanager
    def open(self, bucket: str, key: str, *, offset: int = 0) -> Iterator[BinaryIO]:
        _check_offset(offset)
        try:
            fh = open(self._path(bucket, key), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectMissing(f"object {bucket}/{quoted(key)} not found") from None
        with fh:
            if offset:
                fh.seek(offset)  # past the end is fine: reads then return b""
            yield fh

    def download(self, bucket: str, key: str, path: Path) -> None:
        with self.open(bucket, key) as src, open(path, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK)

    def stat(self, bucket: str, key: str) -> ObjectInfo | None:
        path = self._path(bucket, key)
        try:
            return ObjectInfo(bucket, key, path.stat().st_size) if path.is_file() else None
        except (FileNotFoundError, NotADirectoryError):
            return None

    def delete(self, bucket: str, key: str) -> None:
        path = self._path(bucket, key)
        path.unlink(missing_ok=True)
        # Drop empty parent directories so deleted assets leave nothing behind.
        parent, top = path.parent, self.root / bucket
        while parent != top:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        for key, st in self._walk(self.root / bucket, ""):
            if key.startswith(prefix) and not key.rpartition("/")[2].startswith(".tmp-"):
                yield ObjectInfo(bucket, key, st.st_size, st.st_mtime)

    def list_partial(self, bucket: str) -> Iterator[PartialUpload]:
        for key, st in self._walk(self.root / bucket, ""):
            if key.rpartition("/")[2].startswith(".tmp-"):
                yield PartialUpload(bucket, key, "", st.st_mtime)

    def abort_partial(self, upload: PartialUpload) -> None:
        self.delete(upload.bucket, upload.key)

    def _walk(self, directory: Path, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
        """(key, stat) of every file, in bytewise key order: a directory sorts as its name + "/" (every key
        under it starts so), which is where S3 would list its keys. Holds one directory's names at a time."""
        try:
            entries = [(e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e) for e in os.scandir(directory)]
        except (FileNotFoundError, NotADirectoryError):
            return
        for name, entry in sorted(entries, key=lambda pair: os.fsencode(pair[0])):  # bytes, even if not UTF-8
            if name.endswith("/"):
                yield from self._walk(Path(entry.path), prefix + name)
            else:
                try:
                    yield prefix + name, entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted meanwhile

    def presign(
        self, bucket: str, key: str, *, expires: dt.timedelta, filename: str = "", signed_at: dt.datetime | None = None
    ) -> str:
        return ""  # no URL reaches a local file from another host; callers use the streaming RPCs

    def expire_after(self, bucket: str, days: int) -> None:
        """No lifecycle rules on a filesystem: the service's reaper is all there is."""

    def local_path(self, bucket: str, key: str) -> Path | None:
        """The object's own file, to read in place (objects are immutable: replaced by rename, never rewritten)."""
        path = self._path(bucket, key)
        return path if path.is_file() else None


class S3Storage:
    """S3 or MinIO through the minio SDK; uploads of unknown length go multipart."""

    backend = "s3"

    def __init__(self, settings: Settings) -> None:
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=3.0, read=60.0),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
            maxsize=16,
        )
        self.client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            secure=settings.s3_secure,
            region=settings.s3_region,
            http_client=http,
        )
        self.endpoint = settings.s3_endpoint

    @contextmanager
    def _errors(self, bucket: str = "", key: str = "") -> Iterator[None]:
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError

        try:
            yield
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                raise ObjectMissing(f"object {bucket}/{quoted(key)} not found") from None
            if exc.code in ("AccessDenied", "AllAccessDisabled"):
                raise FailedPrecondition(
                    f"the service may not access {bucket}/{quoted(key)}", Reason.STORAGE_ACCESS_DENIED
                ) from None
            raise StorageUnavailable(f"object storage error {exc.code} for {bucket}/{quoted(key)}") from exc
        except (HTTPError, OSError) as exc:
            raise StorageUnavailable(f"object storage at {self.endpoint} unavailable") from exc

    def ensure_buckets(self, buckets: tuple[str, ...]) -> None:
        with self._errors():
            for bucket in buckets:
                if not self.client.bucket_exists(bucket):
                    try:
                        self.client.make_bucket(bucket)
                    except Exception:
                        if not self.client.bucket_exists(bucket):  # lost a creation race: fine
                            raise

    def ping(self) -> None:
        with self._errors():
            self.client.list_buckets()

    def put(self, bucket: str, key: str, stream: BinaryIO, *, length: int = -1, content_type: str = "") -> None:
        check_location(bucket, key)
        with self._errors(bucket, key):
            self.client.put_object(
                bucket,
                key,
                stream,
                length=length,
                part_size=PART_SIZE if length < 0 else 0,
                content_type=content_type or "application/octet-stream",
            )

    def put_file(self, bucket: str, key: str, path: Path, *, content_type: str = "") -> None:
        with open(path, "rb") as fh:
            self.put(bucket, key, fh, length=os.fstat(fh.fileno()).st_size, content_type=content_type)

    @contextmanager
    def open(self, bucket: str, key: str, *, offset: int = 0) -> Iterator[BinaryIO]:
        from minio.error import S3Error

        check_location(bucket, key)
        _check_offset(offset)
        with self._errors(bucket, key):
            try:
                # A nonzero offset is a ranged GET (`Range: bytes=offset-`): only the tail crosses the network.
                response = self.client.get_object(bucket, key, offset=offset)
            except S3Error as exc:
                # S3 answers 416 InvalidRange for a range starting at (or past) the object's size.
                if not (offset and exc.code == "InvalidRange"):
                    raise
                response = None
        if response is None:
            yield io.BytesIO(b"")
            return
        if offset and response.status != 206:
            # An endpoint that ignored the Range header sent the whole object: skip to `offset` here
            # (slow, but right) rather than hand out bytes labelled with the wrong offsets.
            log.warning("object storage ignored a range request for %s/%s; skipping %d bytes", bucket, key, offset)
            try:
                with self._errors(bucket, key):
                    _discard(response, offset)  # type: ignore[arg-type]  # urllib3 response: readable
            except BaseException:
                response.close()
                response.release_conn()
                raise
        try:
            # Reading happens in the caller: a dropped connection mid-body is an outage too.
            with self._errors(bucket, key):
                yield response  # type: ignore[misc]  # urllib3 response: a readable binary stream
        finally:
            response.close()
            response.release_conn()

    def download(self, bucket: str, key: str, path: Path) -> None:
        with self.open(bucket, key) as src, open(path, "wb") as out, self._errors(bucket, key):
            shutil.copyfileobj(src, out, CHUNK)

    def stat(self, bucket: str, key: str) -> ObjectInfo | None:
        check_location(bucket, key)
        try:
            with self._errors(bucket, key):
                info = self.client.stat_object(bucket, key)
        except ObjectMissing:
            return None
        return ObjectInfo(bucket, key, int(info.size or 0))

    def delete(self, bucket: str, key: str) -> None:
        check_location(bucket, key)
        with self._errors(bucket, key):
            self.client.remove_object(bucket, key)

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._errors(bucket):
            for obj in self.client.list_objects(bucket, prefix=prefix or None, recursive=True):
                modified = obj.last_modified.timestamp() if obj.last_modified else 0.0
                yield ObjectInfo(bucket, obj.object_name or "", int(obj.size or 0), modified)

    def list_partial(self, bucket: str) -> Iterator[PartialUpload]:
        """Incomplete multipart uploads (the SDK's ListMultipartUploads, a page at a time)."""
        key_marker: str | None = None
        upload_marker: str | None = None
        while True:
            with self._errors(bucket):
                page = self.client._list_multipart_uploads(
                    bucket, key_marker=key_marker, upload_id_marker=upload_marker, max_uploads=1000
                )
            for upload in page.uploads:
                started = upload.initiated_time.timestamp() if upload.initiated_time else 0.0
                yield PartialUpload(bucket, upload.object_name, upload.upload_id or "", started)
            if not page.is_truncated or not page.uploads:
                return
            key_marker, upload_marker = page.uploads[-1].object_name, page.uploads[-1].upload_id

    def abort_partial(self, upload: PartialUpload) -> None:
        with self._errors(upload.bucket, upload.key):
            self.client._abort_multipart_upload(upload.bucket, upload.key, upload.upload_id)

    def presign(
        self, bucket: str, key: str, *, expires: dt.timedelta, filename: str = "", signed_at: dt.datetime | None = None
    ) -> str:
        """A GET URL valid for `expires` from `signed_at` (default now); no network call (the region is set)."""
        headers: dict[str, str | list[str] | tuple[str]] | None = (
            {"response-content-disposition": attachment_disposition(filename)} if filename else None
        )
        with self._errors(bucket, key):
            url: str = self.client.presigned_get_object(
                bucket, key, expires=expires, response_headers=headers, request_date=signed_at
            )
        return url

    def local_path(self, bucket: str, key: str) -> Path | None:
        return None  # remote: callers download

    def expire_after(self, bucket: str, days: int) -> None:
        """A lifecycle backstop: objects expire `days` after creation; stale multipart uploads after 1 day."""
        from minio.commonconfig import ENABLED, Filter
        from minio.lifecycleconfig import AbortIncompleteMultipartUpload, Expiration, LifecycleConfig, Rule

        rule = Rule(
            ENABLED,
            rule_filter=Filter(prefix=""),
            rule_id="derivatives-bundle-expiry",
            expiration=Expiration(days=days),
            abort_incomplete_multipart_upload=AbortIncompleteMultipartUpload(days_after_initiation=1),
        )
        with self._errors(bucket):
            self.client.set_bucket_lifecycle(bucket, LifecycleConfig([rule]))


@dataclass(frozen=True)
class SignedUrl:
    url: str  # empty where storage has no URLs (the filesystem backend)
    expires_at: dt.datetime | None


class UrlSigner:
    """Presigned download URLs, made without a network call (the region is configured) and reused
    while more than half of their lifetime is left, in a bounded cache keyed by object and filename."""

    def __init__(self, storage: ObjectStorage, lifetime: dt.timedelta, size: int = 50_000) -> None:
        self.storage = storage
        self.lifetime = lifetime
        self._cache: ExpiringLRU[tuple[str, str, str], SignedUrl] = ExpiringLRU(size)

    def sign(self, location: Location, filename: str) -> SignedUrl:
        key = (location.bucket, location.key, filename)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        # Signed as of a whole second (X-Amz-Date has no fraction), so the reported expiry is exact.
        now = dt.datetime.now(dt.UTC)
        signed_at = now.replace(microsecond=0)
        url = self.storage.presign(
            location.bucket, location.key, expires=self.lifetime, filename=filename, signed_at=signed_at
        )
        signed = SignedUrl(url, signed_at + self.lifetime if url else None)
        if url:
            self._cache.put(key, signed, self.reuse_seconds(signed))
        return signed

    def reuse_seconds(self, signed: SignedUrl) -> float | None:
        """How much longer `signed` is handed out again: while more than half its lifetime is left."""
        if signed.expires_at is None:
            return None
        return (signed.expires_at - self.lifetime / 2 - dt.datetime.now(dt.UTC)).total_seconds()


def _discard(stream: BinaryIO, count: int) -> None:
    while count > 0:
        block = stream.read(min(CHUNK, count))
        if not block:
            return
        count -= len(block)


def _check_offset(offset: int) -> None:
    if offset < 0:
        raise ValueError(f"offset must be >= 0, not {offset}")


async def delete_quietly(storage: ObjectStorage, locations: Iterable[Location]) -> None:
    """Best effort after commit: no row points at these objects any more."""
    for loc in locations:
        try:
            await asyncio.to_thread(storage.delete, loc.bucket, loc.key)
        except Exception as exc:
            log.warning("could not delete %s/%s (left orphaned): %s", loc.bucket, loc.key, exc)


def iter_object(
    storage: ObjectStorage, bucket: str, key: str, offset: int = 0, size: int = CHUNK
) -> Generator[tuple[int, bytes], None, None]:
    """(offset, chunk) pairs of an object from `offset`; closing the generator closes the object."""
    with storage.open(bucket, key, offset=offset) as fh:
        while block := fh.read(size):
            yield offset, block
            offset += len(block)


async def read_object(
    storage: ObjectStorage, bucket: str, key: str, offset: int = 0, size: int = CHUNK
) -> AsyncIterator[tuple[int, bytes]]:
    """(offset, chunk) pairs of an object from `offset`, read in a thread one chunk at a time.

    Opening, each read and closing are blocking (on S3, HTTP requests): none runs on the event loop.
    """
    chunks = iter_object(storage, bucket, key, offset, size)
    # A cancelled caller leaves its read running in its thread; the lock makes the close wait for it
    # (closing a generator that is executing raises ValueError and would leak the connection).
    lock = threading.Lock()

    def step() -> tuple[int, bytes] | None:
        with lock:
            return next(chunks, None)

    def close() -> None:
        with lock:
            chunks.close()

    try:
        while (item := await asyncio.to_thread(step)) is not None:
            yield item
    finally:
        await asyncio.to_thread(close)


def open_storage(settings: Settings) -> ObjectStorage:
    if settings.storage == "s3":
        return S3Storage(settings)
    return FileStorage(settings.data_path / "storage")
