"""RPC metrics (core/metrics.py): every call counted by method and status code, timed, streams counted open.

The interceptor goes before authentication in the server's list, so a refused call is counted too
(UNAUTHENTICATED, PERMISSION_DENIED). Labels come from the handlers registered (service and method
names: a closed set; a method no handler serves is not counted) and grpc.StatusCode.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from core import metrics
from server.handlers import Around, Kind, wrap

_CODES = {code.value[0]: code.name for code in grpc.StatusCode}


def status_name(context: Any) -> str:
    """The status the call ends with: what the handler (or an abort) set, OK when nothing was."""
    code = context.code()
    if code is None:
        return grpc.StatusCode.OK.name
    if isinstance(code, grpc.StatusCode):
        return code.name
    return _CODES.get(code, grpc.StatusCode.UNKNOWN.name) if isinstance(code, int) else grpc.StatusCode.UNKNOWN.name


def _ended(context: Any, exc: BaseException | None) -> str:
    if exc is None or isinstance(exc, grpc.aio.AbortError):
        return status_name(context)
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED.name
    return grpc.StatusCode.UNKNOWN.name  # grpc's answer to an exception a handler let out


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        service, _, method = str(details.method).lstrip("/").rpartition("/")
        return wrap(handler, _measured(service, method))


def _measured(service: str, method: str) -> Around:
    """Around each call of one method: counted by its status code when it ends, timed, a stream counted open."""
    m = metrics.get()

    @contextlib.asynccontextmanager
    async def around(kind: Kind, context: Any) -> AsyncIterator[None]:
        started, error = time.perf_counter(), None
        try:
            if kind is Kind.UNARY:
                yield
            else:
                with metrics.stream_open((service, method, kind)):
                    yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            m.rpcs.labels(service, method, kind, _ended(context, error)).inc()
            seconds = m.rpc_seconds if kind in (Kind.UNARY, Kind.CLIENT_STREAM) else m.stream_seconds
            seconds.labels(service, method, kind).observe(time.perf_counter() - started)

    return around


def interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The metrics interceptor, before authentication (refusals are counted); none when metrics are off."""
    return [MetricsInterceptor()] if metrics.enabled() else []
