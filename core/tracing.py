"""Traces (OpenTelemetry): off unless an OTLP endpoint is configured; a span per job and per asset.

On when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and
`OTEL_SDK_DISABLED` is not `true`): `start` installs a tracer provider exporting OTLP over HTTP
(protobuf) in batches, named `OTEL_SERVICE_NAME` (default "derivatives"); the exporter and the
batch processor read their other standard variables themselves (`OTEL_EXPORTER_OTLP_HEADERS`,
`OTEL_BSP_SCHEDULE_DELAY`, ...). Off, nothing is installed, and `job_span` / `asset_span` / `note`
only set the log context (core/logs.py): no span objects, no OpenTelemetry SDK import.

The RPC spans come from opentelemetry-instrumentation-grpc's interceptor (server/rpc_trace.py); a
job's span is the root of its own trace (it runs later, elsewhere), linked to the RPC that queued
it when the job row carries that call's W3C `traceparent`; an asset's span is a child of its job's.
Ids are span attributes (fine in traces, never metric labels). Every log line written inside a span
carries its trace and span ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from core import logs
from core.records import Job

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Link, Tracer

    from core.host import HostContext

log = logging.getLogger("derivatives.tracing")

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
DEFAULT_SERVICE_NAME = "derivatives"
SCOPE = "derivatives"  # the instrumentation scope of the job and asset spans
# Span attributes (ids are fine here: a trace is one request's story, not a time series).
JOB_ID, JOB_KIND, JOB_ATTEMPT = "derivatives.job.id", "derivatives.job.kind", "derivatives.job.attempt"
ASSET_ID, WORK_ID = "derivatives.asset.id", "derivatives.work.id"

_provider: TracerProvider | None = None
_tracer: Tracer | None = None


def configured(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces: an OTLP endpoint is set and the SDK is not disabled."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def enabled() -> bool:
    """Whether this process records spans (`start` found an endpoint)."""
    return _tracer is not None


def start() -> bool:
    """Install the tracer provider if an endpoint is configured (once per process); whether tracing is on."""
    global _provider, _tracer
    if _tracer is not None or not configured():
        return _tracer is not None
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME", "").strip() or DEFAULT_SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider, _tracer = provider, provider.get_tracer(SCOPE)
    logs.show_trace_ids(_current_ids)
    endpoint = next(f"{v}={os.environ[v]}" for v in ENDPOINT_VARIABLES if os.environ.get(v, "").strip())
    log.info("tracing on: OTLP/HTTP (%s) as service %r", endpoint, name)
    return True


def shutdown() -> None:
    """Export what is buffered and stop (on host stop); tracing is off afterwards."""
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def _current_ids() -> tuple[str, str] | None:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


# --- spans --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def job_span(job: Job) -> Iterator[None]:
    """Run one attempt of a job: its log lines name it, and (tracing on) a span covers it."""
    with logs.about(job=str(job.job_id)):
        if _tracer is None:
            yield
            return
        from opentelemetry.trace import SpanKind

        attributes = {JOB_ID: str(job.job_id), JOB_KIND: job.kind.value, JOB_ATTEMPT: job.attempts}
        name = f"job {job.kind.value}"
        with _tracer.start_as_current_span(name, kind=SpanKind.CONSUMER, attributes=attributes, links=_links(job)):
            yield


@contextlib.contextmanager
def asset_span(asset_id: str) -> Iterator[None]:
    """Make one asset's derivatives: its log lines name it, and (tracing on) a span covers it."""
    with logs.about(asset=asset_id):
        if _tracer is None:
            yield
            return
        with _tracer.start_as_current_span("asset", attributes={ASSET_ID: asset_id}):
            yield


def note(*, job: str = "", asset: str = "", work: str = "") -> None:
    """Name what the current task concerns from here on (a request's ids, a bundle job's work): its log
    lines, and the current span's attributes. For a task of its own (an RPC's, a job's), not a block."""
    for var, value in ((logs.job_id, job), (logs.asset_id, asset), (logs.work_id, work)):
        if value:
            var.set(value)
    if _tracer is None:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    if span.is_recording():
        for key, value in ((JOB_ID, job), (ASSET_ID, asset), (WORK_ID, work)):
            if value:
                span.set_attribute(key, value)


def failed(reason: str) -> None:
    """Mark the current span (a job's) failed with `reason`."""
    if _tracer is None:
        return
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    trace.get_current_span().set_status(Status(StatusCode.ERROR, reason))


# --- across the queue -----------------------------------------------------------------------------------


def traceparent() -> str:
    """The current span as a W3C `traceparent` header value (stored with a job it queues), or ""."""
    if _tracer is None:
        return ""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent", "")


def _links(job: Job) -> list[Link]:
    """A link to the span that queued `job` (its stored traceparent), if any."""
    if not job.traceparent:
        return []
    from opentelemetry import trace
    from opentelemetry.trace import Link
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = TraceContextTextMapPropagator().extract({"traceparent": job.traceparent})
    span_context = trace.get_current_span(context).get_span_context()
    return [Link(span_context)] if span_context.is_valid else []


# --- the role ---------------------------------------------------------------------------------------


class TracingRole:
    """First role of a host: tracing on before anything serves or runs, flushed after everything stopped."""

    name = "tracing"

    async def start(self, ctx: HostContext) -> None:
        start()

    async def drain(self, grace: float) -> None:
        pass

    async def stop(self) -> None:
        await asyncio.to_thread(shutdown)  # exports what is buffered: network, off the event loop
