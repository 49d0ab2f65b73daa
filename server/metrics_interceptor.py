"""RPC metrics (core/metrics.py): every call counted by method and status code, timed, streams counted open.

The interceptor goes before authentication in the server's list, so a refused call is counted too
(UNAUTHENTICATED, PERMISSION_DENIED). Labels come from the handlers registered (service and method
names: a closed set; a method no handler serves is not counted) and grpc.StatusCode.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from core import metrics

UNARY, CLIENT_STREAM, SERVER_STREAM, BIDI_STREAM = "unary", "client_stream", "server_stream", "bidi_stream"
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
        return _wrap(handler, service, method)


def _wrap(handler: grpc.RpcMethodHandler, service: str, method: str) -> grpc.RpcMethodHandler:
    m = metrics.get()
    serializers = dict(
        request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )

    def done(kind: str, started: float, context: Any, exc: BaseException | None) -> None:
        m.rpcs.labels(service, method, kind, _ended(context, exc)).inc()
        seconds = m.rpc_seconds if kind in (UNARY, CLIENT_STREAM) else m.stream_seconds
        seconds.labels(service, method, kind).observe(time.perf_counter() - started)

    if handler.unary_unary is not None or handler.stream_unary is not None:
        kind = UNARY if handler.unary_unary is not None else CLIENT_STREAM
        inner = handler.unary_unary or handler.stream_unary

        async def unary_response(request: Any, context: Any) -> Any:
            started, error = time.perf_counter(), None
            try:
                if kind == CLIENT_STREAM:
                    with metrics.stream_open((service, method, kind)):
                        return await inner(request, context)
                return await inner(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                done(kind, started, context, error)

        make = grpc.unary_unary_rpc_method_handler if kind == UNARY else grpc.stream_unary_rpc_method_handler
        return make(unary_response, **serializers)

    kind = SERVER_STREAM if handler.unary_stream is not None else BIDI_STREAM
    inner_stream = handler.unary_stream or handler.stream_stream
    make_stream = (
        grpc.unary_stream_rpc_method_handler if kind == SERVER_STREAM else grpc.stream_stream_rpc_method_handler
    )

    if inspect.iscoroutinefunction(inner_stream):  # a handler that writes with context.write (health's Watch)

        async def stream_writer(request: Any, context: Any) -> None:
            started, error = time.perf_counter(), None
            try:
                with metrics.stream_open((service, method, kind)):
                    await inner_stream(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                done(kind, started, context, error)

        return make_stream(stream_writer, **serializers)

    async def stream_response(request: Any, context: Any) -> AsyncIterator[Any]:
        started, error = time.perf_counter(), None
        try:
            with metrics.stream_open((service, method, kind)):
                async for item in inner_stream(request, context):
                    yield item
        except BaseException as exc:
            error = exc
            raise
        finally:
            done(kind, started, context, error)

    return make_stream(stream_response, **serializers)


def interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The metrics interceptor, before authentication (refusals are counted); none when metrics are off."""
    return [MetricsInterceptor()] if metrics.enabled() else []
