"""The metrics endpoint of a real server (docs/metrics.md): after a few RPCs, a failing RPC, a derivatives job
with failures and a bundle, one scrape shows the counters moved with the right labels, and no label carries
an id. `SERVER_ENVS` holds the server's variants (more serving processes: one more entry)."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from derivatives.v1 import derivatives_pb2 as pb
from derivatives.v1 import derivatives_pb2_grpc as pb_grpc
from tests import images
from tests.harness import Postgres, ServerProcess, free_port, server_env, wait_for_port
from tests.helpers import expect_error, make_work, wait_bundle, wait_job

SERVICE = "derivatives.v1.DerivativeService"
# The server's variants, by name: each is started with these variables on top of the test's.
SERVER_ENVS: dict[str, dict[str, str]] = {
    "one process": {},
    "two serving processes": {"DERIVATIVES_SERVER_PROCESSES": "2"},
}
# Every label the service's metrics may carry (`pid`: added by prometheus-client to a live gauge of each process).
LABELS = {"service", "method", "type", "code", "kind", "outcome", "stage", "reason", "result", "state", "role", "pid"}
UUID = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}", re.IGNORECASE)


@dataclass
class Metered:
    server: ServerProcess
    url: str
    stub: pb_grpc.DerivativeServiceStub
    # Processes with a domain: the top one, and its serving children when there are several.
    host_processes: int

    def scrape(self) -> list[Sample]:
        with urllib.request.urlopen(self.url, timeout=30) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
        return [s for family in text_string_to_metric_families(text) for s in family.samples]

    def scrape_until(self, ready: Callable[[list[Sample]], bool], timeout: float = 120.0) -> list[Sample]:
        """The first scrape that satisfies `ready` (sampled values appear within a sampling interval)."""
        deadline = time.monotonic() + timeout
        while True:
            samples = self.scrape()
            if ready(samples) or time.monotonic() > deadline:
                return samples
            time.sleep(0.2)


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when none)."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def found(samples: list[Sample], name: str, **labels: str) -> list[Sample]:
    return [s for s in samples if s.name == name and labels.items() <= s.labels.items()]


@pytest.fixture(scope="module", params=list(SERVER_ENVS))
def metered(request: pytest.FixtureRequest, postgres: Postgres, work_dir: Path) -> Iterator[Metered]:
    port = free_port()
    name = re.sub(r"\W+", "-", request.param)
    env = server_env(
        "file",
        postgres.new_database("metrics"),
        work_dir / f"data-metrics-{name}",
        None,
        DERIVATIVES_METRICS_LISTEN=f"127.0.0.1:{port}",
        DERIVATIVES_WORKERS="1",
        **SERVER_ENVS[request.param],
    )
    server = ServerProcess(env, work_dir / f"server-metrics-{name}.log").start()
    try:
        wait_for_port(port, timeout=60)
        with server.channel() as channel:
            stub = pb_grpc.DerivativeServiceStub(channel)
            children = int(SERVER_ENVS[request.param].get("DERIVATIVES_SERVER_PROCESSES", "1"))
            yield Metered(server, f"http://127.0.0.1:{port}/metrics", stub, 1 + children if children > 1 else 1)
    finally:
        assert server.stop() == 0, server.tail()


def test_a_scrape_shows_rpcs_jobs_failures_bundles_and_processes(metered: Metered) -> None:
    stub = metered.stub
    ids: set[str] = set()
    # A derivatives job: one good original, one truncated (undecodable), one over the pixel limit.
    assets = {
        "good": images.jpeg(700, 500),
        "truncated": images.jpeg(700, 500)[:2000],
        "bomb": images.jpeg_claiming(60000, 60000),
    }
    for label, data in assets.items():
        asset_id = f"m-{label}-{uuid.uuid4().hex[:8]}"
        ids.add(asset_id)
        stub.PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=data, skip_derivatives=True))
    job = stub.CreateDerivatives(pb.CreateDerivativesRequest(asset_ids=sorted(ids), only=["thumb_mini"]))
    ids.add(job.job_id)
    job = wait_job(stub, job.job_id)
    assert job.stage == pb.STAGE_SUCCEEDED and len(job.failures) == 2
    # A failing RPC.
    missing = f"m-missing-{uuid.uuid4().hex[:8]}"
    ids.add(missing)
    expect_error(grpc.StatusCode.NOT_FOUND, stub.GetAsset, pb.GetAssetRequest(asset_id=missing))
    # A bundle: built once (a miss, watched to the end), then asked for again (a hit), and read.
    work_id, members = make_work(stub, [images.jpeg(300, 200), images.jpeg(200, 300)])
    ids.update([work_id, *members])
    bundle = wait_bundle(stub, work_id, pb.BUNDLE_KIND_PDF)
    assert bundle.status == pb.BUNDLE_STATUS_SUCCESS
    ids.add(bundle.bundle_id)
    again = stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=work_id, kind=pb.BUNDLE_KIND_PDF))
    assert again.bundle_id == bundle.bundle_id and again.status == pb.BUNDLE_STATUS_SUCCESS
    size = sum(len(r.chunk) for r in stub.ReadBundle(pb.ReadBundleRequest(bundle_id=bundle.bundle_id)))

    def settled(samples: list[Sample]) -> bool:
        """What is sampled (RSS, the Postgres pool) or ends after the call returned (the job) is in."""
        return (
            value(samples, "derivatives_jobs_ended_total", kind="build_bundle", outcome="succeeded") >= 1
            and value(samples, "derivatives_process_resident_memory_bytes", role="pool") > 0
            and len(found(samples, "derivatives_process_resident_memory_bytes", role="derivatives-server"))
            == metered.host_processes
            and value(samples, "derivatives_db_pool_max_connections") > 0
            and value(samples, "derivatives_progress_events_sent_total", type="final") >= 1
        )

    samples = metered.scrape_until(settled)
    rpcs = "derivatives_grpc_server_handled_total"
    unary = dict(service=SERVICE, type="unary")
    # RPCs by method and code, and their latencies.
    assert value(samples, rpcs, **unary, method="GetAsset", code="NOT_FOUND") == 1
    assert value(samples, rpcs, **unary, method="PutAsset", code="OK") == 5
    assert value(samples, rpcs, **unary, method="CreateDerivatives", code="OK") == 1
    assert value(samples, rpcs, **unary, method="FindOrCreateBundle", code="OK") == 2
    assert value(samples, rpcs, service=SERVICE, method="WatchProgress", type="server_stream", code="OK") == 1
    assert value(samples, rpcs, service=SERVICE, method="ReadBundle", type="server_stream", code="OK") == 1
    assert value(samples, rpcs, service="grpc.health.v1.Health", method="Check", code="OK") >= 1
    assert value(samples, "derivatives_grpc_server_handling_seconds_count", method="GetAsset") == 1
    assert value(samples, "derivatives_grpc_server_handling_seconds_bucket", method="GetAsset", le="+Inf") == 1
    assert value(samples, "derivatives_grpc_server_stream_seconds_count", method="WatchProgress") == 1
    assert value(samples, "derivatives_grpc_server_streams_open", method="WatchProgress") == 0  # it ended
    # Jobs by kind and outcome, their durations and waits; the queue (from Postgres) by kind and stage.
    assert value(samples, "derivatives_jobs_claimed_total", kind="create_derivatives") == 1
    assert value(samples, "derivatives_jobs_ended_total", kind="create_derivatives", outcome="succeeded") == 1
    assert value(samples, "derivatives_jobs_ended_total", kind="build_bundle", outcome="succeeded") == 1
    assert value(samples, "derivatives_job_duration_seconds_count", kind="build_bundle", outcome="succeeded") == 1
    assert value(samples, "derivatives_job_queue_wait_seconds_count", kind="create_derivatives") == 1
    for kind in ("create_derivatives", "build_bundle"):
        for stage in ("queued", "running", "finishing"):
            assert len(found(samples, "derivatives_jobs", kind=kind, stage=stage)) == 1
        assert len(found(samples, "derivatives_job_queue_oldest_seconds", kind=kind)) == 1
    # Per-asset durations (three assets of the job, and the bundle's members' own making if any) and failures.
    assert value(samples, "derivatives_asset_duration_seconds_count") >= 3
    assert value(samples, "derivatives_derivative_failures_total", reason="undecodable") == 1
    assert value(samples, "derivatives_derivative_failures_total", reason="too_large") == 1
    # The bundle cache.
    assert value(samples, "derivatives_bundle_cache_requests_total", kind="pdf", result="miss") == 1
    assert value(samples, "derivatives_bundle_cache_requests_total", kind="pdf", result="hit") == 1
    assert value(samples, "derivatives_bundle_cache_stored_bytes", kind="pdf") == size > 0
    assert value(samples, "derivatives_bundle_cache_bundles", kind="pdf") == 1
    assert found(samples, "derivatives_bundle_cache_bundles", kind="zip")  # every kind, 0 or not
    # Watchers and what they were sent.
    assert value(samples, "derivatives_progress_events_sent_total", type="final") >= 1
    assert value(samples, "derivatives_progress_watchers") == 0
    # The pool (one process: busy + idle = 1), its RSS and the host's, the Postgres pool.
    assert (
        value(samples, "derivatives_pool_processes", state="busy")
        + value(samples, "derivatives_pool_processes", state="idle")
        == 1
    )
    pool_rss = found(samples, "derivatives_process_resident_memory_bytes", role="pool")
    assert len(pool_rss) == 1 and pool_rss[0].labels["pid"].isdigit()
    host_rss = found(samples, "derivatives_process_resident_memory_bytes", role="derivatives-server")
    assert len(host_rss) == metered.host_processes and all(s.value > 0 for s in host_rss)  # each process is in
    assert (
        value(samples, "derivatives_db_pool_connections", state="idle")
        + value(samples, "derivatives_db_pool_connections", state="in_use")
        >= 1
    )
    # Bounded labels: known names only, and no value is an id of anything this test made.
    for sample in samples:
        assert set(sample.labels) - {"le"} <= LABELS, sample
        for label, text in sample.labels.items():
            assert text not in ids and not UUID.search(text), (sample.name, label, text)


def test_only_the_metrics_path_is_served(metered: Metered) -> None:
    base = metered.url.removesuffix("/metrics")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(base + "/", timeout=30)
    assert err.value.code == 404


def test_a_taken_metrics_port_stops_start_up_cleanly(tmp_path: Path, postgres: Postgres) -> None:
    """One line and exit 1, as for the gRPC and HTTP ports; the metrics directory is removed at that exit."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = server_env("file", postgres.new_database("metrics"), tmp_path / "data", None)
        env |= {
            "DERIVATIVES_METRICS_LISTEN": f"127.0.0.1:{port}",
            "DERIVATIVES_LOG_LEVEL": "DEBUG",  # the metrics directory's path is a debug line
            "TMPDIR": str(tmp_path),  # where it is made: no trace left in the shared /tmp if the test fails
        }
        code = ServerProcess(env, tmp_path / "server.log").run_to_exit()
    log = (tmp_path / "server.log").read_text()
    assert code == 1, log[-2000:]
    assert f"cannot listen on 127.0.0.1:{port} (metrics)" in log and "derivatives.host: stopped" in log
    assert "Traceback" not in log, log[-2000:]
    made = re.findall(r"metrics directory (\S+)", log)
    assert len(made) == 1, log[-2000:]  # prepare_multiprocess() made it
    assert not Path(made[0]).exists(), f"{made[0]} was left behind"
