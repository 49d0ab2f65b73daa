"""Real services for tests and benchmarks: Postgres, an S3 endpoint, the gRPC server.

Everything listens on 127.0.0.1 and is stopped by its owner.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core.config import Settings, load_settings
from core.storage import ObjectStorage, open_storage
from derivatives.v1 import derivatives_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
S3_KEYS = {"S3_ACCESS_KEY": "testing", "S3_SECRET_KEY": "testing-secret"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class Postgres:
    """A private Postgres (pgserver) in `path`, with one fresh database per caller."""

    def __init__(self, path: Path) -> None:
        import pgserver

        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.server: Any = pgserver.get_server(path, cleanup_mode="stop")

    def new_database(self, prefix: str = "t") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.server.get_uri(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return str(self.server.get_uri(name))

    def stop(self) -> None:
        self.server.cleanup()


class S3Endpoint:
    """moto's server mode: a real S3 HTTP API on loopback, in its own process."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        moto = Path(sys.executable).parent / "moto_server"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(self.port)], stdout=log, stderr=log)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@dataclass
class ServerProcess:
    """`python -m server` with the given environment, listening on a free port."""

    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    # The checkout whose server runs (another one: a benchmark's before/after).
    cwd: Path = ROOT
    # TLS: how the harness's own channels (health, channel()) reach a server that serves TLS.
    credentials: grpc.ChannelCredentials | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def settings(self) -> Settings:
        return load_settings(self.full_env)

    @property
    def full_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DERIVATIVES_", "S3_", "DATABASE_URL"))}
        env.update(self.env)
        env["DERIVATIVES_LISTEN"] = self.address
        env.setdefault("DERIVATIVES_HEALTH_INTERVAL", "0.5")
        env.setdefault("DERIVATIVES_PROGRESS_HEARTBEAT", "0.5")
        return env

    def start(self, wait_serving: bool = True) -> ServerProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server"], env=self.full_env, cwd=self.cwd, stdout=log, stderr=log
            )
        if wait_serving:
            self.wait_health("SERVING")
        return self

    def health(self, timeout: float = 2.0) -> str:
        with self._channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def wait_health(self, want: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; log: {self.log_path}\n{self.tail()}")
            try:
                last = self.health()
                if last == want:
                    return
            except grpc.RpcError as exc:
                last = str(exc.code())
            time.sleep(0.1)
        raise TimeoutError(f"health never became {want} (last {last}); log:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def channel(self) -> grpc.Channel:
        return self._channel(
            [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]
        )

    def _channel(self, options: list[tuple[str, int]] | None = None) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(self.address, options=options)
        return grpc.secure_channel(self.address, self.credentials, options=options)

    def stub(self, channel: grpc.Channel) -> derivatives_pb2_grpc.DerivativeServiceStub:
        return derivatives_pb2_grpc.DerivativeServiceStub(channel)

    def storage(self) -> ObjectStorage:
        return open_storage(self.settings)


# Where the test servers' PutAsset may copy from (storage_ref): a whole bucket, and one folder of another.
IMPORT_SOURCES = "incoming,staging/allowed"


def server_env(backend: str, database_url: str, data_dir: Path, s3: S3Endpoint | None, **extra: str) -> dict[str, str]:
    env = {
        "DATABASE_URL": database_url,
        "DERIVATIVES_DATA_DIR": str(data_dir),
        "DERIVATIVES_STORAGE": backend,
        "DERIVATIVES_IMPORT_SOURCES": IMPORT_SOURCES,
    }
    if backend == "s3":
        assert s3 is not None
        prefix = uuid.uuid4().hex[:8]  # one set of buckets per server: tests compare bucket listings
        env.update(S3_KEYS)
        env.update(
            S3_ENDPOINT=s3.endpoint,
            DERIVATIVES_BUCKET_ORIGINALS=f"orig-{prefix}",
            DERIVATIVES_BUCKET_DERIVATIVES=f"deriv-{prefix}",
            DERIVATIVES_BUCKET_BUNDLES=f"bundle-{prefix}",
        )
    env.update(extra)
    return env
