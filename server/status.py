"""Mapping domain errors onto gRPC statuses. A client never sees a traceback."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from core.database import is_unavailable
from core.errors import (
    QUOTE_CHARS,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from server.rpc_trace import call_ended, name_request

log = logging.getLogger("derivatives.rpc")

# ErrorInfo.domain of every error this service sends.
ERROR_DOMAIN = "derivatives.v1"
MAX_VIOLATIONS = 20  # a reply lists at most this many; the rest are counted in one more
MAX_MESSAGE = 1000  # UTF-8 bytes of a status message (gRPC percent-encodes non-ASCII ones: up to 3x)
# UTF-8 bytes of all violations together: the details travel base64-encoded (4/3) in a trailer, and clients
# refuse trailers past 8 KB (a "soft limit" they report as RESOURCE_EXHAUSTED, hiding the real error).
VIOLATION_BUDGET = 3000

_CODES: list[tuple[type[DomainError], int]] = [
    (InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (NotFound, code_pb2.NOT_FOUND),
    (FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (PermissionDenied, code_pb2.PERMISSION_DENIED),
    (Unauthenticated, code_pb2.UNAUTHENTICATED),
    (ResourceExhausted, code_pb2.RESOURCE_EXHAUSTED),
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


def _clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes (an ellipsis marks the cut)."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "…"


def _pack(message: Any) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(message)
    return detail


def _error_info(reason: Reason, metadata: Mapping[str, str] | None = None) -> any_pb2.Any:
    return _pack(error_details_pb2.ErrorInfo(reason=reason.value, domain=ERROR_DOMAIN, metadata=metadata or {}))


def to_status(exc: BaseException, paths: FieldPaths | None = None) -> status_pb2.Status:
    """The google.rpc.Status for an exception (INTERNAL, with a log reference, when unexpected).

    Every status carries one ErrorInfo; INVALID_ARGUMENT also a BadRequest (at most
    MAX_VIOLATIONS field violations, each clipped), RESOURCE_EXHAUSTED also a RetryInfo.
    """
    if isinstance(exc, InvalidArgument):
        violations: list[tuple[str, str]] = []
        spent = 0
        for f, d in exc.violations[:MAX_VIOLATIONS]:
            pair = (_clip(request_path(f, paths or {}), 2 * QUOTE_CHARS), _clip(d, 3 * QUOTE_CHARS))
            spent += len(pair[0].encode()) + len(pair[1].encode())
            if spent > VIOLATION_BUDGET and violations:
                break
            violations.append(pair)
        if len(exc.violations) > len(violations):
            violations.append(("", f"and {len(exc.violations) - len(violations):,} more violations"))
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
            ]
        )
        message = _clip("; ".join(f"{f}: {d}" if f else d for f, d in violations), MAX_MESSAGE)
        details = [_error_info(exc.reason, exc.metadata), _pack(bad)]
        return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=details)
    for kind, code in _CODES:
        if isinstance(exc, kind):
            details = [_error_info(exc.reason, exc.metadata)]
            if isinstance(exc, ResourceExhausted):
                delay = duration_pb2.Duration()
                delay.FromMilliseconds(round(exc.retry_after * 1000))
                details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
            return status_pb2.Status(code=code, message=_clip(str(exc), MAX_MESSAGE), details=details)
    if is_unavailable(exc):
        return status_pb2.Status(
            code=code_pb2.UNAVAILABLE,
            message="database unavailable",
            details=[_error_info(Reason.DATABASE_UNAVAILABLE)],
        )
    ref = uuid.uuid4().hex[:12]
    log.error("internal error (ref %s)", ref, exc_info=exc)
    return status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error (reference {ref})",
        details=[_error_info(Reason.INTERNAL, {"reference": ref})],
    )


async def abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, paths: FieldPaths) -> NoReturn:
    status = to_status(exc, paths)
    if status.code != code_pb2.INTERNAL:
        log.info("%s: %s", code_pb2.Code.Name(status.code), status.message)
    call_ended(status.code, status.message)
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
        name_request(request)  # the call's log lines (and span) name the asset, work or job it asks about
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
        name_request(request)
        try:
            async for item in fn(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, exc, paths)

    return wrapper
