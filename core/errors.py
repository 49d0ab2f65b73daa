"""Domain errors. The server maps each to one gRPC status code."""

from __future__ import annotations


class DomainError(Exception):
    """Base: a failure with a message safe to show a client."""


class NotFound(DomainError):
    pass


class FailedPrecondition(DomainError):
    pass


class Unavailable(DomainError):
    """A dependency (Postgres, storage) cannot be reached; the call may be retried."""


class InvalidArgument(DomainError):
    """Bad input, with one (field, description) pair per problem."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{f}: {d}" for f, d in violations))

    def __reduce__(self) -> tuple[type[InvalidArgument], tuple[list[tuple[str, str]]]]:
        return (InvalidArgument, (self.violations,))  # crosses process boundaries (pool tasks) intact

    @classmethod
    def one(cls, field: str, description: str) -> InvalidArgument:
        return cls([(field, description)])
