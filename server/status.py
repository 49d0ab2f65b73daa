"""Mapping domain errors onto gRPC statuses. A client never sees a traceback."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from core.database import is_unavailable
from core.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)

log = logging.getLogger("derivatives.rpc")

_CODES: list[tuple[type[DomainError], int]] = [
    (InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (NotFound, code_pb2.NOT_FOUND),
    (FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (Unavailable, code_pb2.UNAVAILABLE),
]


FieldPaths = Mapping[str, str]
F = TypeVar("F", bound=Callable[..., Any])


def field_paths(paths: FieldPaths) -> Callable[[F], F]:
    """Name the request field paths of a handler's domain fields, e.g. {"content_type": "header.content_type"}.

    Core names the domain's fields (`content_type`, `location.bucket`, `only[3]`); a field with no
    entry (nor a prefix of it: `location` maps `location.key` too) is the same in the request.
    """

    def mark(fn: F) -> F:
        fn.field_paths = dict(paths)  # type: ignore[attr-defined]
        return fn

    return mark


def request_path(field: str, paths: FieldPaths) -> str:
    for domain, request in paths.items():
        if field == domain or field.startswith((domain + ".", domain + "[")):
            return request + field[len(domain) :]
    return field


def to_status(exc: BaseException, paths: FieldPaths | None = None) -> status_pb2.Status:
    """The google.rpc.Status for an exception (INTERNAL, with a log reference, when unexpected)."""
    if isinstance(exc, InvalidArgument):
        violations = [(request_path(f, paths or {}), d) for f, d in exc.violations]
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad)
        message = "; ".join(f"{f}: {d}" for f, d in violations)
        return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[detail])
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return status_pb2.Status(code=code, message=str(exc))
    if is_unavailable(exc):
        return status_pb2.Status(code=code_pb2.UNAVAILABLE, message="database unavailable")
    ref = uuid.uuid4().hex[:12]
    log.error("internal error (ref %s)", ref, exc_info=exc)
    return status_pb2.Status(code=code_pb2.INTERNAL, message=f"internal error (reference {ref})")


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, paths: FieldPaths) -> NoReturn:
    status = to_status(exc, paths)
    if status.code != code_pb2.INTERNAL:
        log.info("%s: %s", code_pb2.Code.Name(status.code), status.message)
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("unreachable")  # abort_with_status raises


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]
StreamHandler = Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]]


def unary(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Wrap a unary-response handler: domain errors become statuses."""
    paths: FieldPaths = getattr(fn, "field_paths", {})

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, exc, paths)

    return wrapper


def streaming(fn: StreamHandler[Req, Resp]) -> StreamHandler[Req, Resp]:
    """Wrap a server-streaming handler the same way."""
    paths: FieldPaths = getattr(fn, "field_paths", {})

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Resp]:
        try:
            async for item in fn(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, exc, paths)

    return wrapper
