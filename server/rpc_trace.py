"""The gRPC side of traces and logs: a span per call, and the ids a request names on the call's lines.

- `interceptors()`: opentelemetry-instrumentation-grpc's aio server interceptor when tracing is on
  (core/tracing.py), nothing otherwise; health and reflection calls get no span. It goes first in the
  server's list, so every other interceptor (authentication, its refusals) and the handler run inside
  the call's span.
- `name_request(request)`: the asset, work or job a request names (`asset_id`, `work_id`, `job_id`,
  or a streamed upload's header's), on the call's log lines and its span. Called by the handler
  wrappers (server/status.py) and for a streamed upload's header (server/service.py).
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import Message

from core import tracing
from core.ids import CALLER_ID

# Request fields naming what a call concerns, and the keyword of `tracing.note` each fills.
ID_FIELDS = (("asset_id", "asset"), ("work_id", "work"), ("job_id", "job"))
MAX_JOB_ID = 36  # a UUID's text; anything longer is not one (and is refused by the handler)


def interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The tracing interceptor, first in the server's list; none when tracing is off."""
    if not tracing.enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    # Health probes (every few seconds, from every load balancer) and reflection would drown the calls.
    quiet = filters.negate(filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection.")))
    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(filter_=quiet)
    return [interceptor]


def name_request(request: Any) -> None:
    """Name the ids `request` carries on the rest of the call (well-formed ones only: lines stay short)."""
    if not isinstance(request, Message):  # a client stream: its header is named when read
        return
    fields = request.DESCRIPTOR.fields_by_name
    ids: dict[str, str] = {}
    for field, keyword in ID_FIELDS:
        if field in fields:
            value = getattr(request, field)
            if isinstance(value, str) and _well_formed(field, value):
                ids[keyword] = value
    if ids:
        tracing.note(**ids)


def _well_formed(field: str, value: str) -> bool:
    if field == "job_id":
        return 0 < len(value) <= MAX_JOB_ID and all(c in "0123456789abcdefABCDEF-" for c in value)
    return CALLER_ID.fullmatch(value) is not None


# Codes that are the server's failure, not the caller's (OpenTelemetry's gRPC conventions): the span is an error.
SERVER_FAULTS = frozenset(
    c.value[0]
    for c in (
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    )
)


def call_ended(code: int, message: str) -> None:
    """Record the status a call ends with on its span (`abort_with_status` bypasses the instrumentation's hooks)."""
    if not tracing.enabled():
        return
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("rpc.grpc.status_code", code)
        if code in SERVER_FAULTS:
            span.set_status(Status(StatusCode.ERROR, message))
