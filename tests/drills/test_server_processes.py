"""Several serving processes on one host (DERIVATIVES_SERVER_PROCESSES): one port, one parent, the promises kept.

The kernel spreads connections over the children (SO_REUSEPORT); each test opens enough channels that both
children serve some of them (and checks that they did), then checks what must hold across them.
"""

from __future__ import annotations

import html
import json
import re
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import psutil
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from client.client import Client
from derivatives.v1 import derivatives_pb2 as pb
from derivatives.v1 import derivatives_pb2_grpc
from tests import images
from tests.harness import Postgres, ServerProcess, free_port, server_env
from tests.helpers import make_work

pytestmark = pytest.mark.drill
CHANNELS = 24  # both of 2 children get at least one: all but 2 in 2**24 times


def _channel(server: ServerProcess) -> grpc.Channel:
    """A channel with a connection of its own: gRPC shares one between channels to the same target otherwise."""
    return grpc.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])


def _wait(what: str, check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _children(server: ServerProcess) -> list[psutil.Process]:
    assert server.proc is not None
    return [
        p
        for p in psutil.Process(server.proc.pid).children()
        if "server.child" in " ".join(p.cmdline()) and p.is_running()
    ]


def _start(server: ServerProcess, count: int = 2) -> ServerProcess:
    server.start()
    server.wait_log(f"{count} serving processes on")
    assert len(_children(server)) == count
    return server


def _serving(child: psutil.Process, port: int) -> int:
    """Connections this child has accepted on the port."""
    return sum(1 for c in child.net_connections("tcp") if c.laddr and c.laddr.port == port and c.raddr)


@pytest.fixture
def two(tmp_path: Path, postgres: Postgres) -> Iterator[ServerProcess]:
    env = server_env("file", postgres.new_database("procs"), tmp_path / "data", None)
    env |= {"DERIVATIVES_SERVER_PROCESSES": "2", "DERIVATIVES_WORKERS": "1"}
    env |= {"DERIVATIVES_HTTP_LISTEN": f"127.0.0.1:{free_port()}"}
    env |= {"DERIVATIVES_METRICS_LISTEN": f"127.0.0.1:{free_port()}"}
    server = _start(ServerProcess(env, tmp_path / "server.log"))
    try:
        yield server
    finally:
        children = _children(server) if server.proc is not None else []
        assert server.stop() == 0, server.tail()
        _, alive = psutil.wait_procs(children, timeout=10)  # the parent waited for them: already gone
        assert not alive, server.tail()


def test_exactly_once_bundles_and_watchers_on_either_process(two: ServerProcess) -> None:
    children = _children(two)
    with ExitStack() as stack:
        channels = [stack.enter_context(_channel(two)) for _ in range(CHANNELS)]
        stubs = [derivatives_pb2_grpc.DerivativeServiceStub(c) for c in channels]
        work_id, _ = make_work(stubs[0], [images.jpeg(600 + i, 800) for i in range(3)])
        for stub in stubs:  # connect every channel before the race
            with pytest.raises(grpc.RpcError):
                stub.GetAsset(pb.GetAssetRequest(asset_id="missing"), timeout=30)
        assert all(_serving(child, two.port) > 0 for child in children), "the kernel used one process only"

        bundles: list[pb.Bundle] = []
        finals: list[pb.ProgressEvent] = []
        start = threading.Barrier(len(stubs))

        def request(stub: derivatives_pb2_grpc.DerivativeServiceStub) -> None:
            start.wait(30)
            bundle = stub.FindOrCreateBundle(
                pb.FindOrCreateBundleRequest(work_id=work_id, kind=pb.BUNDLE_KIND_PDF), timeout=60
            )
            bundles.append(bundle)
            events = list(stub.WatchProgress(pb.WatchProgressRequest(bundle_id=bundle.bundle_id), timeout=300))
            finals.append(events[-1])

        threads = [threading.Thread(target=request, args=(stub,)) for stub in stubs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
    assert len(bundles) == len(stubs) and len({b.bundle_id for b in bundles}) == 1
    assert len(finals) == len(stubs)
    assert all(e.WhichOneof("result") == "bundle" and e.bundle.status == pb.BUNDLE_STATUS_SUCCESS for e in finals)
    with psycopg.connect(two.env["DATABASE_URL"]) as conn:
        (jobs,) = conn.execute("SELECT count(*) FROM jobs WHERE kind = 'build_bundle'").fetchone() or (0,)
    assert jobs == 1


def test_a_download_link_made_by_one_process_works_in_the_other(two: ServerProcess) -> None:
    """Without links keys configured each process would make its own demo key; the parent makes one for all."""
    with two.channel() as channel:
        make_work(derivatives_pb2_grpc.DerivativeServiceStub(channel), [images.jpeg(300, 400)])
    base = f"http://{two.env['DERIVATIVES_HTTP_LISTEN']}"
    for _ in range(12):  # each urlopen is a new connection: some land on the other process
        with urllib.request.urlopen(base + "/", timeout=30) as page:
            link = html.unescape(re.findall(r'href="([^"]+/bundles/pdf\?[^"]+)"', page.read().decode())[0])
        with urllib.request.urlopen(urllib.request.Request(link, method="POST"), timeout=30) as answer:
            assert answer.status in (200, 201, 202), answer.status
            assert json.loads(answer.read())["bundleId"]


def test_the_client_spreads_its_calls_over_its_channels(two: ServerProcess) -> None:
    children = _children(two)
    with Client(two.address, channels=CHANNELS) as client:
        for i in range(CHANNELS):
            client.put_asset(f"spread-{i}", images.jpeg(64, 48), skip_derivatives=True)
        assert all(_serving(child, two.port) > 0 for child in children), "one process served every channel"
        assert len(list(client.list_asset_ids())) == CHANNELS


def test_a_killed_serving_process_is_started_again(two: ServerProcess) -> None:
    first = _children(two)
    victim = first[0]
    victim.send_signal(signal.SIGKILL)
    _wait("the restart", lambda: "exited with -9; starting it again" in two.log_path.read_text())
    _wait("a new process", lambda: len(_children(two)) == 2 and victim.pid not in {p.pid for p in _children(two)})
    _wait("serving", lambda: len(re.findall(r"derivatives\.host[^:]*: started: .*grpc", two.log_path.read_text())) >= 3)
    for _ in range(8):  # new connections, to whichever process: all answer
        with _channel(two) as channel:
            assert derivatives_pb2_grpc.DerivativeServiceStub(channel).ListAssets(pb.ListAssetsRequest(), timeout=30)
    assert _sample(two, "derivatives_serving_process_restarts_total") == 1


def _sample(server: ServerProcess, name: str) -> float:
    """One unlabelled sample from the host's metrics endpoint."""
    with urllib.request.urlopen(f"http://{server.env['DERIVATIVES_METRICS_LISTEN']}/metrics", timeout=30) as page:
        text = page.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_serving_processes_stop_when_their_parent_is_killed(tmp_path: Path, postgres: Postgres) -> None:
    env = server_env("file", postgres.new_database("orphans"), tmp_path / "data", None)
    # A long grace: orphans must not use it (the new parent wants the port), even with streams open.
    env |= {"DERIVATIVES_SERVER_PROCESSES": "2", "DERIVATIVES_WORKERS": "0", "DERIVATIVES_SHUTDOWN_GRACE": "120"}
    server = _start(ServerProcess(env, tmp_path / "server.log"))
    children = _children(server)
    with ExitStack() as stack:
        stubs = [derivatives_pb2_grpc.DerivativeServiceStub(stack.enter_context(_channel(server))) for _ in range(8)]
        stubs[0].PutAsset(pb.PutAssetRequest(asset_id="quiet", data=images.jpeg(64, 48), skip_derivatives=True))
        job = stubs[0].CreateDerivatives(pb.CreateDerivativesRequest(asset_ids=["quiet"]))  # no runner: stays queued
        streams = [stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id), timeout=300) for stub in stubs]
        for stream in streams:
            assert next(stream).snapshot  # open, on either child
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        _, alive = psutil.wait_procs(children, timeout=60)  # well under the 120 s grace
        assert not alive, [p.pid for p in alive]
    with socket.socket() as probe:  # and the port is free again, for a server (gRPC sets SO_REUSEADDR: the
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # closed streams' TIME_WAIT does not count)
        probe.bind(("127.0.0.1", server.port))
        probe.listen()


class LocalhostServer(ServerProcess):
    """A server listening on localhost:PORT rather than 127.0.0.1:PORT."""

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"


@pytest.mark.parametrize("first_processes", [1, 2])
def test_a_second_server_on_the_same_port_or_data_refuses_to_start(tmp_path: Path, first_processes: int) -> None:
    """`make run` twice: embedded Postgres (no DATABASE_URL), the same port, the same data directory."""
    data = tmp_path / "data"
    env = {"DERIVATIVES_DATA_DIR": str(data), "DERIVATIVES_WORKERS": "0"}
    first = ServerProcess({**env, "DERIVATIVES_SERVER_PROCESSES": str(first_processes)}, tmp_path / "first.log")
    if first_processes > 1:
        _start(first, first_processes)
    else:
        first.start()
    try:
        attempts = {
            "same port, same data": ({**env}, "is in use by another derivatives server"),
            "same port, other data, 2 processes": (
                {**env, "DERIVATIVES_DATA_DIR": str(tmp_path / "other"), "DERIVATIVES_SERVER_PROCESSES": "2"},
                "cannot listen on",
            ),
            "same port, other data, 1 process": (
                {**env, "DERIVATIVES_DATA_DIR": str(tmp_path / "other1")},
                "cannot listen on",
            ),
            # Another spelling of the address (127.0.0.1 and ::1): still the same port, still refused.
            "same port as localhost, other data, 2 processes": (
                {**env, "DERIVATIVES_DATA_DIR": str(tmp_path / "other2"), "DERIVATIVES_SERVER_PROCESSES": "2"},
                "cannot listen on",
            ),
        }
        for name, (second_env, message) in attempts.items():
            log = tmp_path / f"{name}.log"
            kind = LocalhostServer if "localhost" in name else ServerProcess
            code = kind(second_env, log, port=first.port).run_to_exit()
            text = log.read_text()
            assert code == 1, f"{name}: exit {code}\n{text[-2000:]}"
            assert message in text and "Traceback" not in text, f"{name}:\n{text[-2000:]}"
            assert first.health() == "SERVING"
    finally:
        assert first.stop() == 0, first.tail()
