"""Typed records: the rows the service passes around, and the values their text columns hold.

Each record is frozen and built from a database row by `from_row`, so a misspelt field is
a type error, not a KeyError at run time. The enums' values are the strings stored in
Postgres (see core/sql/migrations/).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

Row = dict[str, Any]


class Stage(StrEnum):
    """A job's stage (jobs.stage)."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHING = "finishing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (Stage.SUCCEEDED, Stage.FAILED)


class JobKind(StrEnum):
    """What a job does (jobs.kind); the runner has one handler per kind."""

    CREATE_DERIVATIVES = "create_derivatives"
    BUILD_BUNDLE = "build_bundle"


class BundleKind(StrEnum):
    """A bundle's format (bundles.kind); the value is also the file extension."""

    PDF = "pdf"
    ZIP = "zip"

    @property
    def extension(self) -> str:
        return self.value

    @property
    def content_type(self) -> str:
        return "application/pdf" if self is BundleKind.PDF else "application/zip"


class BundleStatus(StrEnum):
    """A bundle's state (bundles.status); only core/bundles.py changes it."""

    IN_PROGRESS = "in_progress"
    SUCCESS = "success"
    ERROR = "error"


class FailureClass(StrEnum):
    """Why a derivative (or a whole asset) could not be made, as a bounded class: set where the failure is made
    (`Failed`, `AssetFailure`), and the `reason` label of derivatives_derivative_failures_total (docs/metrics.md)."""

    OUT_OF_MEMORY = "out_of_memory"  # over the pool process's memory ceiling
    TOO_LARGE = "too_large"  # pixels or decoded size over a limit
    TOO_NARROW = "too_narrow"  # never upscaled
    UNDECODABLE = "undecodable"  # a corrupt, truncated or unreadable image or PDF
    NO_DEFINITION = "no_definition"  # nothing applies to the content type
    ORIGINAL_MISSING = "original_missing"  # gone from storage
    WORKER_CRASHED = "worker_crashed"  # the pool process died twice on it
    ORIGINAL_REPLACED = "original_replaced"  # replaced while rendering: results discarded
    ASSET_DELETED = "asset_deleted"
    ENCODE_FAILED = "encode_failed"
    INTERNAL = "internal"  # a bug or an unexpected library error
    OTHER = "other"  # none of the above (and a failure stored before classes were)

    @classmethod
    def stored(cls, value: object) -> FailureClass:
        """The class a stored failure names: OTHER for one stored without a class, or with one since dropped."""
        try:
            return cls(str(value))
        except ValueError:
            return cls.OTHER


@dataclass(frozen=True)
class Location:
    """Where an object lives in storage."""

    bucket: str
    key: str

    @classmethod
    def from_row(cls, row: Row) -> Location:
        """The object a row's `bucket` and `object_key` columns name."""
        return cls(row["bucket"], row["object_key"])


@dataclass(frozen=True)
class DerivativeFailure:
    """Why the current original has no derivative of `key` (assets.derivative_failures)."""

    key: str
    reason: str
    failed_at: dt.datetime | None


@dataclass(frozen=True)
class Asset:
    asset_id: str
    content_type: str
    size_bytes: int
    sha512: str
    width: int
    height: int
    filename: str
    original: Location
    failures: tuple[DerivativeFailure, ...]
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def from_row(cls, row: Row) -> Asset:
        failures: dict[str, Any] = row["derivative_failures"] or {}
        return cls(
            asset_id=row["asset_id"],
            content_type=row["content_type"],
            size_bytes=row["size_bytes"],
            sha512=row["sha512"],
            width=row["width"],
            height=row["height"],
            filename=row["filename"],
            original=Location.from_row(row),
            failures=tuple(
                DerivativeFailure(
                    key=key,
                    reason=str(info.get("reason", "")),
                    failed_at=dt.datetime.fromisoformat(info["failed_at"]) if info.get("failed_at") else None,
                )
                for key, info in sorted(failures.items())
            ),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


@dataclass(frozen=True)
class Derivative:
    asset_id: str
    key: str
    content_type: str
    size_bytes: int
    width: int
    height: int
    sha512: str
    original_sha512: str
    location: Location
    metadata: dict[str, str] = field(hash=False)
    created_at: dt.datetime

    @classmethod
    def from_row(cls, row: Row) -> Derivative:
        return cls(
            asset_id=row["asset_id"],
            key=row["key"],
            content_type=row["content_type"],
            size_bytes=row["size_bytes"],
            width=row["width"],
            height=row["height"],
            sha512=row["sha512"],
            original_sha512=row["original_sha512"],
            location=Location.from_row(row),
            metadata={str(k): str(v) for k, v in (row["metadata"] or {}).items()},
            created_at=row["created_at"],
        )

    @classmethod
    def from_json(cls, data: Row) -> Derivative:
        """From a row that Postgres turned into JSON (json_agg): timestamps arrive as ISO 8601 text."""
        return cls.from_row({**data, "created_at": dt.datetime.fromisoformat(data["created_at"])})


@dataclass(frozen=True)
class AssetView:
    """An asset with its derivatives, as GetAsset shows it."""

    asset: Asset
    derivatives: tuple[Derivative, ...]
    # Every derivative the plan expects for the current original exists.
    derivatives_created: bool


@dataclass(frozen=True)
class Work:
    work_id: str
    title: str
    creator: str
    url: str
    member_asset_ids: tuple[str, ...]
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def from_row(cls, row: Row, member_asset_ids: list[str] | tuple[str, ...]) -> Work:
        return cls(
            work_id=row["work_id"],
            title=row["title"],
            creator=row["creator"],
            url=row["url"],
            member_asset_ids=tuple(member_asset_ids),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


@dataclass(frozen=True)
class Member:
    """One page of a work, with what a bundle needs of its asset."""

    position: int
    asset_id: str
    content_type: str
    sha512: str
    width: int
    original: Location

    @classmethod
    def from_row(cls, row: Row) -> Member:
        return cls(
            position=row["position"],
            asset_id=row["asset_id"],
            content_type=row["content_type"],
            sha512=row["sha512"],
            width=row["width"],
            original=Location.from_row(row),
        )


@dataclass(frozen=True)
class AssetFailure:
    """One asset (and key, when one key failed) a job could not make."""

    asset_id: str
    key: str
    reason: str
    failure_class: FailureClass = FailureClass.OTHER

    def as_json(self) -> dict[str, str]:
        return {
            "asset_id": self.asset_id,
            "key": self.key,
            "reason": self.reason,
            "failure_class": self.failure_class.value,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AssetFailure:
        """From jobs.failures; a failure stored before classes were (no `failure_class`) reads as OTHER."""
        return cls(
            str(data.get("asset_id", "")),
            str(data.get("key", "")),
            str(data.get("reason", "")),
            FailureClass.stored(data.get("failure_class")),
        )


@dataclass(frozen=True)
class DerivativesPayload:
    """What a create_derivatives job makes."""

    asset_ids: tuple[str, ...]
    only: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    lazy: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "asset_ids": list(self.asset_ids),
            "only": list(self.only),
            "exclude": list(self.exclude),
            "lazy": self.lazy,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DerivativesPayload:
        return cls(
            asset_ids=tuple(data["asset_ids"]),
            only=tuple(data.get("only", ())),
            exclude=tuple(data.get("exclude", ())),
            lazy=bool(data.get("lazy", False)),
        )


@dataclass(frozen=True)
class BundlePayload:
    """Which bundle a build_bundle job builds."""

    bundle_id: uuid.UUID

    def as_json(self) -> dict[str, Any]:
        return {"bundle_id": str(self.bundle_id)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BundlePayload:
        return cls(uuid.UUID(data["bundle_id"]))


Payload = DerivativesPayload | BundlePayload


def payload_from_json(kind: JobKind, data: dict[str, Any]) -> Payload:
    if kind is JobKind.BUILD_BUNDLE:
        return BundlePayload.from_json(data)
    return DerivativesPayload.from_json(data)


@dataclass(frozen=True)
class Job:
    job_id: uuid.UUID
    kind: JobKind
    payload: Payload
    stage: Stage
    done: int
    total: int
    seq: int
    attempts: int
    max_attempts: int
    failures: tuple[AssetFailure, ...]
    error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    # The W3C traceparent of the call that queued it ("" without tracing): its run's span links to it.
    traceparent: str = ""

    @classmethod
    def from_row(cls, row: Row) -> Job:
        kind = JobKind(row["kind"])
        return cls(
            job_id=row["job_id"],
            kind=kind,
            payload=payload_from_json(kind, row["payload"]),
            stage=Stage(row["stage"]),
            done=row["done"],
            total=row["total"],
            seq=row["seq"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            failures=tuple(AssetFailure.from_json(f) for f in row["failures"] or []),
            error=row["error"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            traceparent=row.get("traceparent") or "",
        )


@dataclass(frozen=True)
class ProgressEvent:
    """One recorded change of a job (progress_events), or a job's state read as one."""

    job_id: uuid.UUID
    seq: int
    stage: Stage
    done: int
    total: int
    at: dt.datetime
    # The job's attempts at this change: a new attempt (a takeover, a retry) starts over from done 0.
    attempt: int

    @classmethod
    def from_row(cls, row: Row) -> ProgressEvent:
        stage = Stage(row["stage"])
        return cls(row["job_id"], row["seq"], stage, row["done"], row["total"], row["at"], row["attempt"])

    @classmethod
    def of_job(cls, job: Job) -> ProgressEvent:
        return cls(job.job_id, job.seq, job.stage, job.done, job.total, job.updated_at, job.attempts)


@dataclass(frozen=True)
class Bundle:
    bundle_id: uuid.UUID
    work_id: str
    kind: BundleKind
    checksum: str
    status: BundleStatus
    job_id: uuid.UUID | None
    location: Location
    size_bytes: int
    filename: str
    error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    last_accessed_at: dt.datetime
    # The build job's progress (None when the job has been pruned).
    stage: Stage | None = None
    done: int = 0
    total: int = 0
    # Seconds since last_accessed_at, in the database's clock, when the read asked for it.
    access_age_seconds: float | None = None

    @classmethod
    def from_row(cls, row: Row) -> Bundle:
        stage = row.get("stage")
        return cls(
            bundle_id=row["bundle_id"],
            work_id=row["work_id"],
            kind=BundleKind(row["kind"]),
            checksum=row["checksum"],
            status=BundleStatus(row["status"]),
            job_id=row["job_id"],
            location=Location.from_row(row),
            size_bytes=row["size_bytes"],
            filename=row["filename"],
            error=row["error"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            last_accessed_at=row["last_accessed_at"],
            stage=Stage(stage) if stage else None,
            done=row.get("done") or 0,
            total=row.get("total") or 0,
            access_age_seconds=row.get("access_age_seconds"),
        )
