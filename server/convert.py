"""Domain records to protobuf messages (and the proto's enums to the domain's)."""

from __future__ import annotations

import datetime as dt
import uuid

from google.protobuf import timestamp_pb2
from google.rpc import code_pb2, status_pb2

from core.definitions import Definition
from core.lru import ExpiringLRU
from core.media import EXTENSIONS
from core.progress import Update
from core.reclaim import BucketReport
from core.records import AssetView, Bundle, BundleKind, BundleStatus, Derivative, Job, JobKind, Stage, Work
from core.storage import SignedUrl, UrlSigner
from derivatives.v1 import derivatives_pb2 as pb


def ts(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def derivative_filename(asset_id: str, key: str, content_type: str) -> str:
    return f"{asset_id}_{key}.{EXTENSIONS.get(content_type, 'bin')}"


class DerivativeMessages:
    """Each derivative's message, made once per stored object and reused while its URL is.

    Keyed by the derivative record itself (every field but its metadata hashes; equality compares
    all), so a changed row is a new entry; only the URL ages, and the message is rebuilt when the
    URL signer would sign a new one. Bounded, least recently used out.
    """

    def __init__(self, urls: UrlSigner, size: int = 100_000) -> None:
        self.urls = urls
        self._cache: ExpiringLRU[Derivative, pb.Derivative] = ExpiringLRU(size)

    def get(self, d: Derivative) -> pb.Derivative:
        cached = self._cache.get(d)
        if cached is not None:
            return cached
        message, signed = derivative(d, self.urls)
        self._cache.put(d, message, self.urls.reuse_seconds(signed))
        return message


def derivative(d: Derivative, urls: UrlSigner) -> tuple[pb.Derivative, SignedUrl]:
    filename = derivative_filename(d.asset_id, d.key, d.content_type)
    signed = urls.sign(d.location, filename)
    message = pb.Derivative(
        asset_id=d.asset_id,
        key=d.key,
        content_type=d.content_type,
        size_bytes=d.size_bytes,
        width=d.width,
        height=d.height,
        sha512=d.sha512,
        original_sha512=d.original_sha512,
        created_at=ts(d.created_at),
        location=pb.StorageRef(bucket=d.location.bucket, key=d.location.key),
        url=signed.url,
        url_expires_at=ts(signed.expires_at),
        filename=filename,
        metadata=d.metadata,
    )
    return message, signed


def asset(view: AssetView, messages: DerivativeMessages) -> pb.Asset:
    a = view.asset
    return pb.Asset(
        asset_id=a.asset_id,
        content_type=a.content_type,
        size_bytes=a.size_bytes,
        sha512=a.sha512,
        width=a.width,
        height=a.height,
        filename=a.filename,
        original=pb.StorageRef(bucket=a.original.bucket, key=a.original.key),
        created_at=ts(a.created_at),
        updated_at=ts(a.updated_at),
        derivatives_created=view.derivatives_created,
        derivatives=[messages.get(d) for d in view.derivatives],
        derivative_failures=[
            pb.DerivativeFailure(key=f.key, reason=f.reason, failed_at=ts(f.failed_at)) for f in a.failures
        ],
    )


def work(w: Work) -> pb.Work:
    return pb.Work(
        work_id=w.work_id,
        title=w.title,
        member_asset_ids=list(w.member_asset_ids),
        creator=w.creator,
        url=w.url,
        created_at=ts(w.created_at),
        updated_at=ts(w.updated_at),
    )


STAGES = {
    Stage.QUEUED: pb.STAGE_QUEUED,
    Stage.RUNNING: pb.STAGE_RUNNING,
    Stage.FINISHING: pb.STAGE_FINISHING,
    Stage.SUCCEEDED: pb.STAGE_SUCCEEDED,
    Stage.FAILED: pb.STAGE_FAILED,
}
JOB_KINDS = {JobKind.CREATE_DERIVATIVES: pb.JOB_KIND_CREATE_DERIVATIVES, JobKind.BUILD_BUNDLE: pb.JOB_KIND_BUILD_BUNDLE}
BUNDLE_KINDS = {pb.BUNDLE_KIND_PDF: BundleKind.PDF, pb.BUNDLE_KIND_ZIP: BundleKind.ZIP}
_KIND_ENUMS = {v: k for k, v in BUNDLE_KINDS.items()}
_BUNDLE_STATUS = {
    BundleStatus.IN_PROGRESS: pb.BUNDLE_STATUS_IN_PROGRESS,
    BundleStatus.SUCCESS: pb.BUNDLE_STATUS_SUCCESS,
    BundleStatus.ERROR: pb.BUNDLE_STATUS_ERROR,
}


def job(j: Job) -> pb.Job:
    error = None
    if j.stage is Stage.FAILED:
        error = status_pb2.Status(code=code_pb2.INTERNAL, message=j.error or "failed")
    return pb.Job(
        job_id=str(j.job_id),
        kind=JOB_KINDS[j.kind],
        stage=STAGES[j.stage],
        done=j.done,
        total=j.total,
        created_at=ts(j.created_at),
        updated_at=ts(j.updated_at),
        failures=[pb.AssetFailure(asset_id=f.asset_id, key=f.key, reason=f.reason) for f in j.failures],
        error=error,
        attempts=j.attempts,
    )


def progress_event(update: Update) -> pb.ProgressEvent:
    e = update.event
    event = pb.ProgressEvent(
        seq=e.seq,
        stage=STAGES[e.stage],
        done=e.done,
        total=e.total,
        updated_at=ts(e.at),
        snapshot=update.snapshot,
        heartbeat=update.heartbeat,
        attempt=e.attempt,
    )
    if update.job is not None:
        result = job(update.job)
        event.job.CopyFrom(result)
        if update.job.stage is Stage.FAILED:
            event.error.CopyFrom(result.error)
    return event


class ProgressMessages:
    """WatchProgress messages serialized once for all the watchers they go to, by `Update.key` (and, for a
    bundle's final event, the bundle): N watchers of a job cost one SerializeToString per event."""

    def __init__(self, size: int = 10_000, bundle_ttl: float = 5.0) -> None:
        self._cache: ExpiringLRU[tuple[object, ...], bytes] = ExpiringLRU(size)
        # A bundle's final event carries a signed URL: kept this long (seconds), so a late watcher's URL is fresh.
        self.bundle_ttl = bundle_ttl
        self.encoded = 0  # messages serialized (cache misses), counted for the tests

    def of(self, update: Update) -> bytes:
        """The bytes of `update` (serialized now if no watcher needed them before)."""
        return self.get(update) or self.encode(update)

    def get(self, update: Update, bundle_id: uuid.UUID | None = None) -> bytes | None:
        """The bytes of `update` if already serialized (with `bundle_id`'s bundle: a bundle's final event)."""
        return self._cache.get((*update.key, bundle_id))

    def encode(self, update: Update, bundle_id: uuid.UUID | None = None, bundle: pb.Bundle | None = None) -> bytes:
        """Serialize `update` (with `bundle`, the bundle `bundle_id` at its final event) and keep the bytes."""
        event = progress_event(update)
        if bundle is not None:
            event.bundle.CopyFrom(bundle)
        data = event.SerializeToString()
        self.encoded += 1
        self._cache.put((*update.key, bundle_id), data, self.bundle_ttl if bundle_id is not None else None)
        return data


def bundle(b: Bundle, urls: UrlSigner) -> pb.Bundle:
    signed = urls.sign(b.location, b.filename) if b.status is BundleStatus.SUCCESS else None
    return pb.Bundle(
        bundle_id=str(b.bundle_id),
        work_id=b.work_id,
        kind=_KIND_ENUMS[b.kind],
        status=_BUNDLE_STATUS[b.status],
        stage=STAGES[b.stage] if b.stage is not None else pb.STAGE_UNSPECIFIED,
        done=b.done,
        total=b.total,
        checksum=b.checksum,
        size_bytes=b.size_bytes,
        filename=b.filename,
        url=signed.url if signed else "",
        url_expires_at=ts(signed.expires_at) if signed else None,
        error=b.error or "",
        created_at=ts(b.created_at),
        updated_at=ts(b.updated_at),
        last_accessed_at=ts(b.last_accessed_at),
    )


def definition(d: Definition, default_bucket: str) -> pb.DerivativeDefinition:
    return pb.DerivativeDefinition(
        key=d.key,
        content_types=list(d.content_types),
        default_create=d.default_create,
        bucket=d.bucket or default_bucket,
        transformer=d.transformer,
        max_width=d.max_width,
        thumbnail_mode=d.thumbnail_mode,
        quality=d.quality,
        options=d.options,
    )


def reclaim_report(report: BucketReport, dry_run: bool, done: bool) -> pb.ReclaimStorageResponse:
    return pb.ReclaimStorageResponse(
        bucket=report.bucket,
        listed=report.listed,
        referenced=report.referenced,
        foreign=report.foreign,
        young=report.young,
        orphans=report.orphans,
        orphan_bytes=report.orphan_bytes,
        partial_uploads=report.partial_uploads,
        sample_keys=report.sample,
        done=done,
        dry_run=dry_run,
    )
