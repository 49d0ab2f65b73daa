"""Domain errors. The server maps each to one gRPC status code and one `google.rpc.ErrorInfo` reason.

Every error carries a `Reason` (UPPER_SNAKE_CASE, stable: clients branch on it) and a few
short metadata values; the proto's comments list the reasons. Messages and violation
descriptions quote client input through `quote`, so no error repeats a 10 KB id.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

QUOTE_CHARS = 100  # at most this much of any client input in a message


class Reason(StrEnum):
    # INVALID_ARGUMENT
    INVALID_FIELD = "INVALID_FIELD"
    UNKNOWN_DERIVATIVE_KEY = "UNKNOWN_DERIVATIVE_KEY"
    CONTENT_TYPE_MISMATCH = "CONTENT_TYPE_MISMATCH"
    CHECKSUM_MISMATCH = "CHECKSUM_MISMATCH"
    ORIGINAL_TOO_LARGE = "ORIGINAL_TOO_LARGE"
    DERIVATIVE_TOO_LARGE = "DERIVATIVE_TOO_LARGE"
    # NOT_FOUND
    ASSET_NOT_FOUND = "ASSET_NOT_FOUND"
    WORK_NOT_FOUND = "WORK_NOT_FOUND"
    JOB_NOT_FOUND = "JOB_NOT_FOUND"
    BUNDLE_NOT_FOUND = "BUNDLE_NOT_FOUND"
    DERIVATIVE_NOT_FOUND = "DERIVATIVE_NOT_FOUND"
    SOURCE_NOT_FOUND = "SOURCE_NOT_FOUND"
    # FAILED_PRECONDITION
    ASSET_IN_WORK = "ASSET_IN_WORK"
    ORIGINAL_CHANGED = "ORIGINAL_CHANGED"
    WORK_HAS_NO_MEMBERS = "WORK_HAS_NO_MEMBERS"
    BUNDLE_NOT_READY = "BUNDLE_NOT_READY"
    BUNDLE_NOT_STORED = "BUNDLE_NOT_STORED"
    SWEEP_RUNNING = "SWEEP_RUNNING"
    STORAGE_NOT_OURS = "STORAGE_NOT_OURS"
    # PERMISSION_DENIED / UNAUTHENTICATED
    SOURCE_NOT_ALLOWED = "SOURCE_NOT_ALLOWED"
    STORAGE_ACCESS_DENIED = "STORAGE_ACCESS_DENIED"
    SCOPE_REQUIRED = "SCOPE_REQUIRED"
    LINK_INVALID = "LINK_INVALID"
    LINK_EXPIRED = "LINK_EXPIRED"
    CREDENTIALS_MISSING = "CREDENTIALS_MISSING"
    CREDENTIALS_INVALID = "CREDENTIALS_INVALID"
    # RESOURCE_EXHAUSTED
    TOO_MANY_JOBS = "TOO_MANY_JOBS"
    # UNAVAILABLE
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"
    # INTERNAL
    INTERNAL = "INTERNAL"


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """ascii() of client input (non-ASCII escaped, so characters are bytes), cut to `limit` characters,
    with how long it really was."""
    text = ascii(value)
    if len(text) <= limit:
        return text
    size = f"{len(value):,} characters" if isinstance(value, str | bytes) else "long"
    return f"{text[:limit]}... ({size})"


class DomainError(Exception):
    """Base: a failure with a message safe to show a client, a machine-readable reason and metadata."""

    default_reason = Reason.INTERNAL

    def __init__(self, message: str, reason: Reason | None = None, **metadata: str) -> None:
        super().__init__(message)
        self.reason = reason or self.default_reason
        self.metadata = {k: str(v)[:QUOTE_CHARS] for k, v in metadata.items()}

    def __reduce__(self) -> tuple[Any, ...]:
        # Crosses process boundaries (pool tasks) intact; the state dict restores the metadata.
        return (type(self), (str(self), self.reason), {"metadata": self.metadata})


class NotFound(DomainError):
    pass


class FailedPrecondition(DomainError):
    pass


class PermissionDenied(DomainError):
    pass


class Unauthenticated(DomainError):
    default_reason = Reason.CREDENTIALS_MISSING


class ResourceExhausted(DomainError):
    """A quota is used up; `retry_after` seconds is when trying again makes sense."""

    def __init__(self, message: str, reason: Reason, retry_after: float, **metadata: str) -> None:
        super().__init__(message, reason, **metadata)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (ResourceExhausted, (str(self), self.reason, self.retry_after), {"metadata": self.metadata})


class Unavailable(DomainError):
    """A dependency (Postgres, storage) cannot be reached; the call may be retried."""

    default_reason = Reason.DATABASE_UNAVAILABLE


class InvalidArgument(DomainError):
    """Bad input, with one (field, description) pair per problem."""

    default_reason = Reason.INVALID_FIELD

    def __init__(self, violations: list[tuple[str, str]], reason: Reason | None = None, **metadata: str) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{f}: {d}" for f, d in violations[:20]), reason, **metadata)

    def __reduce__(self) -> tuple[Any, ...]:
        return (InvalidArgument, (self.violations, self.reason), {"metadata": self.metadata})

    @classmethod
    def one(cls, field: str, description: str, reason: Reason | None = None, **metadata: str) -> InvalidArgument:
        return cls([(field, description)], reason, **metadata)
