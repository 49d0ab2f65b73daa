"""Try the deployment of docs/deployment.md on one machine: one Postgres, one server host with N serving
processes, M worker hosts, shared filesystem storage, a metrics endpoint per host.

    .venv/bin/python scripts/local_cluster.py --serving 2 --worker-hosts 2      # until Ctrl-C
    .venv/bin/python scripts/local_cluster.py --serving 2 --worker-hosts 1 --smoke   # a few calls, then stop
    .venv/bin/python scripts/local_cluster.py --metrics-port auto --smoke   # free metrics ports, printed
    make cluster SERVING=2 WORKER_HOSTS=2

Everything listens on 127.0.0.1 and lives under --dir (default .cluster/): Postgres in pg/, objects in data/,
each process's log in logs/. On a real deployment each worker host is its own machine with the same
DATABASE_URL and S3 settings; here they share the filesystem storage instead.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclass
class Host:
    name: str
    command: list[str]
    env: dict[str, str]
    log: Path
    metrics: str
    process: subprocess.Popen[bytes] | None = None
    log_start: int = 0  # where this run's lines begin in the log (a run appends to the last one's)

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log_start = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.command, env=self.env, cwd=ROOT, stdout=out, stderr=out)

    def lines(self) -> list[str]:
        """This run's log lines."""
        try:
            with open(self.log, "rb") as log:
                log.seek(self.log_start)
                return log.read().decode(errors="replace").splitlines()
        except OSError:
            return []

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def wait_until(what: str, check: object, hosts: list[Host], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for host in hosts:
            if host.process is not None and host.process.poll() is not None:
                raise SystemExit(f"{host.name} exited with {host.process.returncode}; see {host.log}")
        if callable(check) and check():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def started(host: Host, role: str) -> bool:
    """Whether the host's log says, in this run, that it started with `role` among its roles."""
    return any("derivatives.host: started:" in line and role in line.split("started:")[1] for line in host.lines())


def metrics_addresses(spec: str, hosts: int) -> list[str]:
    """Each host's DERIVATIVES_METRICS_LISTEN: "" for none (`0`), PORT for the server and the next ports for the
    worker hosts, or a free loopback port each (`auto`)."""
    if spec == "auto":
        sockets = [socket.socket() for _ in range(hosts)]
        try:
            for sock in sockets:  # all held until every port is chosen: no two hosts get the same one
                sock.bind(("127.0.0.1", 0))
            return [f"127.0.0.1:{sock.getsockname()[1]}" for sock in sockets]
        finally:
            for sock in sockets:
                sock.close()
    try:
        port = int(spec)
    except ValueError:
        raise SystemExit(f"--metrics-port: a port, 0 or auto, got {spec!r}") from None
    return [f"127.0.0.1:{port + i}" if port else "" for i in range(hosts)]


def base_env(args: argparse.Namespace, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DERIVATIVES_", "DATABASE_URL"))}
    env.update(
        DATABASE_URL=database_url,
        DERIVATIVES_DATA_DIR=str(args.dir / "data"),
        DERIVATIVES_STORAGE="file",
        DERIVATIVES_HTTP_LISTEN="",
    )
    return env


def smoke(address: str, hosts: list[Host]) -> None:
    """A few calls through several channels: derivatives made on the worker hosts, one bundle, metrics scraped."""
    import grpc

    from derivatives.v1 import derivatives_pb2 as pb
    from derivatives.v1 import derivatives_pb2_grpc

    sys.path.insert(0, str(ROOT))
    from tests import images

    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel: several serving processes
    channels = [grpc.insecure_channel(address, options=options) for _ in range(8)]
    stubs = [derivatives_pb2_grpc.DerivativeServiceStub(c) for c in channels]
    ids = [f"cluster-{i}" for i in range(16)]
    for i, asset_id in enumerate(ids):
        stubs[i % len(stubs)].PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=images.jpeg(1200 + i, 900)))
    stubs[0].PutWork(pb.PutWorkRequest(work_id="cluster-work", title="A work", member_asset_ids=ids))
    bundle = stubs[1].FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id="cluster-work", kind=pb.BUNDLE_KIND_PDF))
    events = list(stubs[2].WatchProgress(pb.WatchProgressRequest(bundle_id=bundle.bundle_id), timeout=300))
    print(f"16 assets, 1 work, its PDF: {pb.BundleStatus.Name(events[-1].bundle.status)}")
    for host in hosts:  # the runner logs each job it finished
        done = sum(": succeeded (" in line for line in host.lines())
        print(f"  {host.name}: ran {done} job(s)")
    for host in hosts:
        if host.metrics:
            with urllib.request.urlopen(f"http://{host.metrics}/metrics", timeout=30) as page:
                lines = [line for line in page.read().decode().splitlines() if line and not line.startswith("#")]
            print(f"  {host.name}: {len(lines)} samples at http://{host.metrics}/metrics")
    for channel in channels:
        channel.close()


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and each option's default."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_Help)
    parser.add_argument("--serving", type=int, default=2, help="serving processes of the server host (N)")
    parser.add_argument("--worker-hosts", type=int, default=2, help="worker hosts beside it (M)")
    parser.add_argument("--workers", type=int, default=1, help="pool processes per host (DERIVATIVES_WORKERS)")
    parser.add_argument("--port", type=int, default=50051, help="the gRPC port")
    parser.add_argument(
        "--metrics-port",
        default="9464",
        help="the server's; worker hosts take the next; 0: none; auto: a free port for each host",
    )
    parser.add_argument("--dir", type=Path, default=ROOT / ".cluster")
    parser.add_argument("--smoke", action="store_true", help="make a few calls, print where the work ran, stop")
    args = parser.parse_args()
    args.dir = args.dir.resolve()
    metrics = metrics_addresses(args.metrics_port, 1 + args.worker_hosts)

    from core.database import EmbeddedPostgres

    pg = EmbeddedPostgres(args.dir)  # as `make run` would own it, but shared here by every host
    database_url = pg.start()
    address = f"127.0.0.1:{args.port}"
    python = sys.executable
    server_env = base_env(args, database_url) | {
        "DERIVATIVES_LISTEN": address,
        "DERIVATIVES_SERVER_PROCESSES": str(args.serving),
        "DERIVATIVES_WORKERS": str(args.workers),
        "DERIVATIVES_METRICS_LISTEN": metrics[0],
    }
    hosts = [
        Host(
            "server",
            [python, "-m", "server"],
            server_env,
            args.dir / "logs/server.log",
            server_env["DERIVATIVES_METRICS_LISTEN"],
        )
    ]
    for i in range(args.worker_hosts):
        env = base_env(args, database_url) | {
            "DERIVATIVES_WORKERS": str(args.workers),
            "DERIVATIVES_METRICS_LISTEN": metrics[1 + i],
        }
        log = args.dir / f"logs/worker-{i + 1}.log"
        hosts.append(Host(f"worker-{i + 1}", [python, "-m", "worker"], env, log, metrics[1 + i]))
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    codes: list[int | None] = []
    try:
        for host in hosts:
            host.start()
        serving = "serving-processes" if args.serving > 1 else "grpc"  # the parent's line, after its children's
        for host in hosts:
            role = serving if host is hosts[0] else "runner"
            wait_until(f"{host.name} to start", lambda h=host, r=role: started(h, r), hosts)  # type: ignore[misc]
        for host in hosts:
            print(
                f"{host.name}: pid {host.process.pid if host.process else '?'}, log {host.log}"
                + (f", metrics http://{host.metrics}/metrics" if host.metrics else "")
            )
        print(f"gRPC on {address} ({args.serving} serving processes); DATABASE_URL={database_url}")
        if args.smoke:
            smoke(address, hosts)
        else:
            print("Ctrl-C stops everything.")
            while not stopping and all(h.process is not None and h.process.poll() is None for h in hosts):
                time.sleep(0.5)
    finally:
        codes = [host.stop() for host in reversed(hosts)]
        pg.stop()
    bad = [code for code in codes if code not in (0, None)]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
