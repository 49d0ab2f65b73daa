"""Session fixtures: one Postgres, one S3 endpoint (SeaweedFS), one server per storage backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from derivatives.v1 import derivatives_pb2_grpc
from tests.harness import Postgres, S3Endpoint, ServerProcess, server_env


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("svc")


@pytest.fixture(scope="session")
def postgres(work_dir: Path) -> Iterator[Postgres]:
    pg = Postgres(work_dir / "pg")
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
def s3(work_dir: Path) -> Iterator[S3Endpoint]:
    """`weed mini` on loopback: the S3 server of every test that needs one and does not stop it."""
    endpoint = S3Endpoint(work_dir / "s3.log")
    yield endpoint
    endpoint.stop()


@pytest.fixture(scope="session", params=["file", "s3"])
def server(request: pytest.FixtureRequest, postgres: Postgres, work_dir: Path) -> Iterator[ServerProcess]:
    backend = request.param
    s3 = request.getfixturevalue("s3") if backend == "s3" else None
    data_dir = work_dir / f"data-{backend}"
    env = server_env(backend, postgres.new_database(backend), data_dir, s3)
    proc = ServerProcess(env, work_dir / f"server-{backend}.log").start()
    yield proc
    assert proc.stop() == 0, proc.tail()


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[derivatives_pb2_grpc.DerivativeServiceStub]:
    with server.channel() as ch:
        yield derivatives_pb2_grpc.DerivativeServiceStub(ch)
