"""Wrapping a gRPC method handler, whichever of the four kinds it is: what the server's own interceptors share.

An interceptor (server/auth.py, server/metrics_interceptor.py) gives `wrap` an async context manager factory;
each call of the wrapped handler runs inside it, in the call's own task and context: around the whole response
for a unary reply, around the whole stream for a streamed one (a generator's items, or a handler that writes
with `context.write`, as health's Watch does).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from enum import StrEnum
from typing import Any

import grpc


class Kind(StrEnum):
    """A method's kind, by who streams (also the `type` label of the RPC metrics)."""

    UNARY = "unary"
    CLIENT_STREAM = "client_stream"
    SERVER_STREAM = "server_stream"
    BIDI_STREAM = "bidi_stream"


# Given the call's kind and context: what to enter before the handler runs and exit once it has ended (an
# exception the handler raises passes through it).
Around = Callable[[Kind, Any], AbstractAsyncContextManager[object]]


def wrap(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    """The same handler (and serializers), each call run inside `around(kind, context)`."""
    serializers = dict(
        request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )
    if handler.unary_unary is not None or handler.stream_unary is not None:
        kind = Kind.UNARY if handler.unary_unary is not None else Kind.CLIENT_STREAM
        inner = handler.unary_unary or handler.stream_unary

        async def unary_response(request: Any, context: Any) -> Any:
            async with around(kind, context):
                return await inner(request, context)

        make = grpc.unary_unary_rpc_method_handler if kind is Kind.UNARY else grpc.stream_unary_rpc_method_handler
        return make(unary_response, **serializers)

    kind = Kind.SERVER_STREAM if handler.unary_stream is not None else Kind.BIDI_STREAM
    inner_stream = handler.unary_stream or handler.stream_stream
    make_stream = (
        grpc.unary_stream_rpc_method_handler if kind is Kind.SERVER_STREAM else grpc.stream_stream_rpc_method_handler
    )
    if inspect.iscoroutinefunction(inner_stream):  # a handler that writes with context.write (health's Watch)

        async def stream_writer(request: Any, context: Any) -> None:
            async with around(kind, context):
                await inner_stream(request, context)

        return make_stream(stream_writer, **serializers)

    async def stream_response(request: Any, context: Any) -> AsyncIterator[Any]:
        async with around(kind, context):
            async for item in inner_stream(request, context):
                yield item

    return make_stream(stream_response, **serializers)
