"""core/tracing.py: off unless an OTLP endpoint is configured, and then nearly free; ids still on log lines."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import uuid

from core import logs, tracing
from core.records import DerivativesPayload, Job, JobKind, Stage


def test_on_only_with_an_otlp_endpoint() -> None:
    assert not tracing.configured({})
    assert not tracing.configured({"OTEL_EXPORTER_OTLP_ENDPOINT": " "})
    assert tracing.configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert tracing.configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
    assert not tracing.configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_SDK_DISABLED": "true"})


def test_off_the_scopes_still_name_job_and_asset_on_log_lines() -> None:
    assert not tracing.enabled()
    now = dt.datetime.now(dt.UTC)
    payload = DerivativesPayload(("a-1",))
    job = Job(uuid.UUID(int=7), JobKind.CREATE_DERIVATIVES, payload, Stage.RUNNING, 0, 1, 1, 1, 3, (), None, now, now)
    with tracing.job_span(job), tracing.asset_span("a-1"):
        assert (logs.job_id.get(), logs.asset_id.get()) == (str(uuid.UUID(int=7)), "a-1")
        assert logs.trace_ids() == ("", "")
        assert tracing.traceparent() == ""
    assert (logs.job_id.get(), logs.asset_id.get()) == ("", "")


def test_off_no_sdk_is_loaded_by_the_server_code() -> None:
    code = (
        "import sys, asyncio; import server.grpc_role, worker.host, worker.runner, core.tracing as t;"
        "asyncio.run(t.TracingRole().start(None)); assert not t.enabled();"
        "loaded = [m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter'))];"
        "assert not loaded, loaded"
    )
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
