"""Traces and logs (issue 11): JSON log lines carry the ids of what they concern; with an OTLP endpoint,
spans for RPCs, jobs and assets reach it, and a job's log lines carry its span's trace id.

A real server each; the OTLP endpoint is a small OTLP/HTTP receiver in this process, decoding what the
server's exporter posts with opentelemetry-proto.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from derivatives.v1 import derivatives_pb2 as pb
from derivatives.v1.derivatives_pb2_grpc import DerivativeServiceStub
from tests import images
from tests.harness import Postgres, ServerProcess, server_env
from tests.helpers import PDF, expect_error, make_work, wait_bundle, wait_derivatives_created

WAIT_SECONDS = 60.0  # a bounded poll for spans to arrive, not a timing claim
RPC = "/derivatives.v1.DerivativeService/"


@dataclass(frozen=True)
class LogLine:
    """One JSON log line of the server (or of its pool processes)."""

    logger: str
    level: str
    message: str
    job_id: str
    asset_id: str
    work_id: str
    trace_id: str
    span_id: str


def json_lines(log_path: Path) -> list[LogLine]:
    """Every line of the log, each required to be one JSON object with the documented keys."""
    out = []
    for number, text in enumerate(log_path.read_text().splitlines(), 1):
        try:
            record = json.loads(text)
        except ValueError:
            pytest.fail(f"line {number} of {log_path} is not JSON: {text[:300]!r}")
        assert isinstance(record, dict) and {"time", "level", "logger", "message"} <= set(record), text
        out.append(
            LogLine(
                record["logger"],
                record["level"],
                record["message"],
                *(str(record.get(key, "")) for key in ("job_id", "asset_id", "work_id", "trace_id", "span_id")),
            )
        )
    return out


# --- an OTLP/HTTP receiver -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, str]
    links: tuple[tuple[str, str], ...]  # (trace id, span id) of each link
    service: str


def _text(value: AnyValue) -> str:
    kind = value.WhichOneof("value")
    return "" if kind is None else str(getattr(value, kind))


class OtlpReceiver:
    """POST /v1/traces (OTLP/HTTP, protobuf, gzip or not) on loopback; keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.add(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            service = next((_text(a.value) for a in resource_spans.resource.attributes if a.key == "service.name"), "")
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    span = Span(
                        s.name,
                        s.trace_id.hex(),
                        s.span_id.hex(),
                        s.parent_span_id.hex(),
                        {a.key: _text(a.value) for a in s.attributes},
                        tuple((link.trace_id.hex(), link.span_id.hex()) for link in s.links),
                        service,
                    )
                    with self.lock:
                        self.spans.append(span)

    def wait_for(self, what: str, match: Callable[[Span], bool]) -> Span:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            with self.lock:
                found = [s for s in self.spans if match(s)]
            if found:
                return found[0]
            time.sleep(0.05)
        with self.lock:
            names = sorted({s.name for s in self.spans})
        raise AssertionError(f"no span for {what} arrived; spans seen: {names}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


# --- the tests ---------------------------------------------------------------------------------------------


def test_json_log_lines_carry_the_job_asset_and_work_they_concern(postgres: Postgres, tmp_path: Path) -> None:
    env = server_env(
        "file",
        postgres.new_database("jsonlogs"),
        tmp_path / "data",
        None,
        DERIVATIVES_LOG_FORMAT="json",
        DERIVATIVES_LOG_LEVEL="DEBUG",  # the pool's per-asset line is a debug one
        DERIVATIVES_WORKERS="1",
    )
    server = ServerProcess(env, tmp_path / "server.log").start()
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    try:
        with server.channel() as channel:
            stub = DerivativeServiceStub(channel)
            asset_id = f"a-{uuid.uuid4().hex[:8]}"
            stub.PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=images.jpeg(320, 240)))
            wait_derivatives_created(stub, asset_id)
            work_id, members = make_work(stub, [images.jpeg(300, 200), images.jpeg(200, 300)])
            assert wait_bundle(stub, work_id, PDF).status == pb.BUNDLE_STATUS_SUCCESS
            expect_error(grpc.StatusCode.NOT_FOUND, stub.GetAsset, pb.GetAssetRequest(asset_id=missing))
    finally:
        assert server.stop() == 0, server.tail()
    lines = json_lines(server.log_path)

    # The runner's lines about a job name it (every attempt, success, failure line starts "job <id>:").
    runner = [line for line in lines if line.logger == "derivatives.runner" and line.message.startswith("job ")]
    assert len(runner) >= 4, runner  # two jobs, each claimed and finished
    for line in runner:
        assert line.job_id and line.message.startswith(f"job {line.job_id}:"), line
    # Per-asset lines (in the pool process) name the asset and the job they are part of.
    rendered = [line for line in lines if line.logger == "derivatives.tasks" and line.message.startswith("rendered")]
    assert {line.asset_id for line in rendered} >= {asset_id, *members}, rendered
    assert all(line.job_id for line in rendered), rendered
    # The bundle's job names the work: its members' renders and its last line.
    assert {line.asset_id for line in rendered if line.work_id == work_id} == set(members), rendered
    assert any(line.work_id == work_id and "succeeded" in line.message for line in runner), runner
    # A call's lines name what the request asked about.
    refused = [line for line in lines if line.logger == "derivatives.rpc" and missing in line.message]
    assert refused and all(line.asset_id == missing for line in refused), refused
    # Tracing is off: no trace ids anywhere.
    assert not any(line.trace_id or line.span_id for line in lines)


@pytest.mark.parametrize("processes", [1, 2])
def test_spans_for_rpcs_jobs_and_assets_reach_the_otlp_endpoint(
    postgres: Postgres, tmp_path: Path, receiver: OtlpReceiver, processes: int
) -> None:
    """With 2 serving processes the RPCs' spans come from the children, the job's from the parent."""
    env = server_env(
        "file",
        postgres.new_database("tracing"),
        tmp_path / "data",
        None,
        DERIVATIVES_LOG_FORMAT="json",
        DERIVATIVES_LOG_LEVEL="DEBUG",
        DERIVATIVES_WORKERS="1",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="50",  # ms: spans leave soon after they end
        DERIVATIVES_SERVER_PROCESSES=str(processes),
    )
    server = ServerProcess(env, tmp_path / "server.log").start()
    asset_id = f"t-{uuid.uuid4().hex[:8]}"
    try:
        with server.channel() as channel:
            stub = DerivativeServiceStub(channel)
            stub.PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=images.jpeg(320, 240)))
            wait_derivatives_created(stub, asset_id)
            expect_error(grpc.StatusCode.NOT_FOUND, stub.GetAsset, pb.GetAssetRequest(asset_id="nowhere"))
        put = receiver.wait_for("PutAsset", lambda s: s.name == RPC + "PutAsset")
        refused = receiver.wait_for("GetAsset", lambda s: s.attributes.get("derivatives.asset.id") == "nowhere")
        job = receiver.wait_for("the job", lambda s: s.name == "job create_derivatives")
        asset = receiver.wait_for("the asset", lambda s: s.name == "asset")
    finally:
        assert server.stop() == 0, server.tail()

    assert put.service == job.service == "derivatives"
    assert refused.attributes["rpc.grpc.status_code"] == str(grpc.StatusCode.NOT_FOUND.value[0])
    assert not any("grpc.health" in span.name for span in receiver.spans)  # probes make no spans
    assert put.attributes["rpc.method"] == "PutAsset" and put.attributes["derivatives.asset.id"] == asset_id
    # The job runs later, in a trace of its own, linked to the call that queued it.
    job_id = job.attributes["derivatives.job.id"]
    assert job.attributes["derivatives.job.kind"] == "create_derivatives"
    assert job.trace_id != put.trace_id and job.links == ((put.trace_id, put.span_id),)
    # The asset's span is the job's child.
    assert (asset.trace_id, asset.parent_span_id) == (job.trace_id, job.span_id)
    assert asset.attributes["derivatives.asset.id"] == asset_id

    lines = json_lines(server.log_path)
    about_job = [line for line in lines if line.job_id == job_id]
    assert about_job, "no log line names the job"
    assert all(line.trace_id == job.trace_id for line in about_job), about_job
    # The pool process's line for the asset carries the asset span's ids, carried with the task.
    pool = [line for line in lines if line.logger == "derivatives.tasks" and line.asset_id == asset_id]
    assert pool and all((line.trace_id, line.span_id) == (job.trace_id, asset.span_id) for line in pool), pool
