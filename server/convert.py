"""Database rows to protobuf messages."""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.protobuf import timestamp_pb2
from google.rpc import code_pb2, status_pb2

from core.assets import AssetView
from core.database import Row
from core.definitions import Definition
from core.media import EXTENSIONS
from core.progress import Update
from core.storage import ObjectStorage
from core.works import WorkView
from derivatives.v1 import derivatives_pb2 as pb


def ts(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def derivative_filename(asset_id: str, key: str, content_type: str) -> str:
    return f"{asset_id}_{key}.{EXTENSIONS.get(content_type, 'bin')}"


def derivative(row: Row, storage: ObjectStorage, url_expiry: dt.timedelta) -> pb.Derivative:
    filename = derivative_filename(row["asset_id"], row["key"], row["content_type"])
    return pb.Derivative(
        asset_id=row["asset_id"],
        key=row["key"],
        content_type=row["content_type"],
        size_bytes=row["size_bytes"],
        width=row["width"],
        height=row["height"],
        sha512=row["sha512"],
        original_sha512=row["original_sha512"],
        created_at=ts(row["created_at"]),
        location=pb.StorageRef(bucket=row["bucket"], key=row["object_key"]),
        url=storage.presign(row["bucket"], row["object_key"], expires=url_expiry, filename=filename),
        filename=filename,
        metadata={str(k): str(v) for k, v in (row["metadata"] or {}).items()},
    )


def asset(view: AssetView, storage: ObjectStorage, url_expiry: dt.timedelta, derivatives_created: bool) -> pb.Asset:
    row = view.asset
    failures: dict[str, Any] = row["derivative_failures"] or {}
    return pb.Asset(
        asset_id=row["asset_id"],
        content_type=row["content_type"],
        size_bytes=row["size_bytes"],
        sha512=row["sha512"],
        width=row["width"],
        height=row["height"],
        filename=row["filename"],
        original=pb.StorageRef(bucket=row["bucket"], key=row["object_key"]),
        created_at=ts(row["created_at"]),
        updated_at=ts(row["updated_at"]),
        derivatives_created=derivatives_created,
        derivatives=[derivative(d, storage, url_expiry) for d in view.derivatives],
        derivative_failures=[
            pb.DerivativeFailure(
                key=key,
                reason=str(info.get("reason", "")),
                failed_at=ts(dt.datetime.fromisoformat(info["failed_at"])) if info.get("failed_at") else None,
            )
            for key, info in sorted(failures.items())
        ],
    )


def work(view: WorkView) -> pb.Work:
    row = view.work
    return pb.Work(
        work_id=row["work_id"],
        title=row["title"],
        member_asset_ids=view.member_asset_ids,
        creator=row["creator"],
        url=row["url"],
        created_at=ts(row["created_at"]),
        updated_at=ts(row["updated_at"]),
    )


STAGES = {
    "queued": pb.STAGE_QUEUED,
    "running": pb.STAGE_RUNNING,
    "finishing": pb.STAGE_FINISHING,
    "succeeded": pb.STAGE_SUCCEEDED,
    "failed": pb.STAGE_FAILED,
}
JOB_KINDS = {"create_derivatives": pb.JOB_KIND_CREATE_DERIVATIVES, "build_bundle": pb.JOB_KIND_BUILD_BUNDLE}


def job(row: Row) -> pb.Job:
    error = None
    if row["stage"] == "failed":
        error = status_pb2.Status(code=code_pb2.INTERNAL, message=row["error"] or "failed")
    return pb.Job(
        job_id=str(row["job_id"]),
        kind=JOB_KINDS.get(row["kind"], pb.JOB_KIND_UNSPECIFIED),
        stage=STAGES.get(row["stage"], pb.STAGE_UNSPECIFIED),
        done=row["done"],
        total=row["total"],
        created_at=ts(row["created_at"]),
        updated_at=ts(row["updated_at"]),
        failures=[
            pb.AssetFailure(asset_id=f.get("asset_id", ""), key=f.get("key", ""), reason=f.get("reason", ""))
            for f in row["failures"] or []
        ],
        error=error,
        attempts=row["attempts"],
    )


def progress_event(update: Update) -> pb.ProgressEvent:
    row = update.row
    event = pb.ProgressEvent(
        seq=row["seq"],
        stage=STAGES.get(row["stage"], pb.STAGE_UNSPECIFIED),
        done=row["done"],
        total=row["total"],
        updated_at=ts(row.get("updated_at") or row.get("at")),
        snapshot=update.snapshot,
        heartbeat=update.heartbeat,
    )
    if update.final:
        result = job(row)
        event.job.CopyFrom(result)
        if row["stage"] == "failed":
            event.error.CopyFrom(result.error)
    return event


BUNDLE_KINDS = {pb.BUNDLE_KIND_PDF: "pdf", pb.BUNDLE_KIND_ZIP: "zip"}
_KIND_ENUMS = {v: k for k, v in BUNDLE_KINDS.items()}
_BUNDLE_STATUS = {
    "in_progress": pb.BUNDLE_STATUS_IN_PROGRESS,
    "success": pb.BUNDLE_STATUS_SUCCESS,
    "error": pb.BUNDLE_STATUS_ERROR,
}


def bundle(row: Row, storage: ObjectStorage, url_expiry: dt.timedelta) -> pb.Bundle:
    url, expires = "", None
    if row["status"] == "success":
        url = storage.presign(row["bucket"], row["object_key"], expires=url_expiry, filename=row["filename"])
        if url:
            expires = ts(dt.datetime.now(dt.UTC) + url_expiry)
    return pb.Bundle(
        bundle_id=str(row["bundle_id"]),
        work_id=row["work_id"],
        kind=_KIND_ENUMS[row["kind"]],
        status=_BUNDLE_STATUS[row["status"]],
        stage=STAGES.get(row.get("stage") or "", pb.STAGE_UNSPECIFIED),
        done=row.get("done") or 0,
        total=row.get("total") or 0,
        checksum=row["checksum"],
        size_bytes=row["size_bytes"],
        filename=row["filename"],
        url=url,
        url_expires_at=expires,
        error=row["error"] or "",
        created_at=ts(row["created_at"]),
        updated_at=ts(row["updated_at"]),
        last_accessed_at=ts(row["last_accessed_at"]),
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
