"""Thumbnail throughput per worker process and per host, bookkeeping per asset, and the queue's cost per job (issue 11).

1. Scaling. One CreateDerivatives job of `thumb_large` for N 4000x3000 JPEGs (bench/thumbnails.py's 12 MP
   originals), timed from the request until the job's final event (WatchProgress) says SUCCEEDED, run by
   - one worker host (`python -m worker`) with DERIVATIVES_WORKERS = 1, 2 and 4 pool processes;
   - two worker hosts of 2 processes each on the same DATABASE_URL and storage directory.
   The gRPC server (`python -m server`, DERIVATIVES_WORKERS=0, embedded Postgres, file storage) serves the
   calls and runs no jobs, so each configuration runs the same runner code, started fresh for every
   repetition (untimed). img/s and img/s per core used (min(processes, cores)); configurations interleaved.
   On a 2-core machine 4 processes (one host of 4, or two of 2) oversubscribe the cores.
   For each run, CPU seconds by role, per asset: the pool processes (imaging, storage in and out), the
   worker hosts' own processes (event loop: claim, read, attach, progress), the gRPC server (the calls and
   the progress stream) and Postgres; bookkeeping is everything but the pool, as a share of it. And the
   database's transactions per asset (pg_stat_database, read 1.2 s after the run, when the backends have
   reported: idle runners' claim polls during those waits count too).
2. Queue overhead per job, measured directly: the real queue (core/queue.py PostgresQueue) on the server's
   Postgres, no runner: N jobs enqueued (untimed), then claim + finish of each, timed per job, and claim +
   one progress write + finish (what a one-unit job costs the queue); and end to end, N no-op jobs (lazy
   CreateDerivatives of an asset whose thumbnail exists: nothing to render) sent back to back to one host of
   2 processes, from the first request until the last is SUCCEEDED.

Writes bench/results/throughput.json (bench/render.py makes the tables of docs/benchmarks.md). Exits
non-zero only when some output was wrong, never for a slow number. Bounded: fixed counts, every wait
has a timeout; everything on 127.0.0.1.

    .venv/bin/python -m bench.throughput [--images 48] [--reps 3] [--jobs 200]   # ~3 minutes on 2 cores
    .venv/bin/python -m bench.throughput --quick                                 # 8 images, 1 rep, 40 jobs
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import (
    ROOT,
    WORK,
    arguments,
    cpu_seconds,
    header,
    interleaved,
    load_average,
    process_tree,
    psutil,
    running_server,
    server_pids,
    upload_files,
    wait_for_job,
    write_results,
)
from bench.thumbnails import THUMB_KEY, THUMB_WIDTH, Size, ensure_originals

if TYPE_CHECKING:
    from client.client import Client
    from tests.harness import ServerProcess

SIZE = Size(4000, 3000)
DEFAULT_IMAGES, DEFAULT_REPS, DEFAULT_JOBS = 48, 3, 200
POLL_SECONDS = 0.05
STATS_FLUSH_SECONDS = 1.2
READY_TIMEOUT, JOB_TIMEOUT = 60.0, 300.0
TARGETS = {"queue_overhead_ms_max": 2.0, "bookkeeping_share_max": 0.05}


@dataclass(frozen=True)
class Config:
    name: str
    hosts: tuple[int, ...]  # pool processes of each worker host

    @property
    def processes(self) -> int:
        return sum(self.hosts)

    @property
    def label(self) -> str:
        if len(self.hosts) == 1:
            return f"1 host, DERIVATIVES_WORKERS={self.hosts[0]}"
        return f"{len(self.hosts)} hosts x DERIVATIVES_WORKERS={self.hosts[0]} (same Postgres and storage)"


CONFIGS = (Config("w1", (1,)), Config("w2", (2,)), Config("w4", (4,)), Config("2hosts", (2, 2)))


# --- worker hosts ---------------------------------------------------------------------------


class WorkerHosts:
    """`python -m worker` processes on the server's database and storage, started and stopped around a run."""

    def __init__(self, server: ServerProcess, hosts: tuple[int, ...], log_dir: Path, checkout: Path = ROOT) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        for i, workers in enumerate(hosts):
            env = {**server.full_env, "DERIVATIVES_WORKERS": str(workers), "DERIVATIVES_LOG_LEVEL": "INFO"}
            log = log_dir / f"worker-{i}.log"
            log.write_bytes(b"")
            with open(log, "ab") as out:
                command = [sys.executable, "-m", "worker"]
                proc = subprocess.Popen(command, env=env, cwd=checkout, stdout=out, stderr=out)
            self.procs.append(proc)
            self.logs.append(log)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        for proc, log in zip(self.procs, self.logs, strict=True):
            while "started: up to" not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker host did not start: {log.read_text(errors='replace')[-2000:]}")
                time.sleep(0.05)

    def main_pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def pool_pids(self) -> list[int]:
        return [pid for p in self.procs for pid in process_tree(p.pid)[1:]]

    def stop(self) -> list[str]:
        problems = []
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc, log in zip(self.procs, self.logs, strict=True):
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait(10)
            if code != 0:
                problems.append(f"worker host exited with {code}: {log.read_text(errors='replace')[-500:]}")
        return problems


def postgres_pids(service_dir: Path) -> list[int]:  # running_server's Postgres lives in service_dir/pg
    """The bench's own Postgres (postmaster and backends), not another one on the machine."""
    for proc in psutil().process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "postgres" in cmdline and str(service_dir / "pg") in cmdline and " -D " in cmdline:
            return process_tree(proc.info["pid"])
    return []


def transactions(database_url: str) -> int:
    """Transactions the database has counted (each statement outside a transaction block is one); a
    backend reports its counts within about a second of going idle (PostgreSQL 15+), so wait that long first."""
    import psycopg

    time.sleep(STATS_FLUSH_SECONDS)
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def cpu_total(pids: list[int], before: dict[int, float]) -> float:
    """CPU seconds `pids` used since `before` (a process started since counts from 0)."""
    now = cpu_seconds(pids)
    return sum(now[p] - before.get(p, 0.0) for p in now)


# --- 1. scaling -----------------------------------------------------------------------------


@dataclass
class Run:
    config: Config
    seconds: list[float] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)  # CPU seconds per role, one dict per repetition

    def result(self, images: int, cores: int) -> dict[str, Any]:
        best = min(self.seconds)
        used = min(self.config.processes, cores)
        per_image = {role: statistics.median(c[role] for c in self.cpu) / images for role in self.cpu[0]}
        roles = {role: 1000 * value for role, value in per_image.items() if role != "transactions"}
        bookkeeping = roles["hosts"] + roles["server"] + roles["postgres"]
        return {
            "name": self.config.name,
            "label": self.config.label,
            "hosts": list(self.config.hosts),
            "processes": self.config.processes,
            "cores_used": used,
            "oversubscribed": self.config.processes > cores,
            "seconds": self.seconds,
            "best_images_per_s": images / best,
            "median_images_per_s": images / statistics.median(self.seconds),
            "best_images_per_s_per_core": images / best / used,
            "cpu_ms_per_image": roles,
            "transactions_per_image": per_image["transactions"],
            "bookkeeping_share": bookkeeping / roles["pool"] if roles["pool"] else None,
        }


def run_job(
    server: ServerProcess, client: Client, config: Config, asset_ids: list[str], log_dir: Path, checkout: Path
) -> tuple[float, dict[str, float], list[str]]:
    """One job of every asset on fresh worker hosts of `config`: seconds, CPU seconds per role, problems."""
    from derivatives.v1 import derivatives_pb2 as pb

    hosts = WorkerHosts(server, config.hosts, log_dir, checkout)
    problems: list[str] = []
    try:
        hosts.wait_ready()
        pg = postgres_pids(log_dir)
        groups = {"pool": hosts.pool_pids(), "hosts": hosts.main_pids(), "server": [server_pids(server)[0]]}
        groups["postgres"] = pg
        xacts = transactions(server.env["DATABASE_URL"])
        before = {role: cpu_seconds(pids) for role, pids in groups.items()}
        start = time.perf_counter()
        job = client.create_derivatives(asset_ids, only=[THUMB_KEY])
        job = wait_for_job(client, job.job_id, JOB_TIMEOUT)
        elapsed = time.perf_counter() - start
        groups["postgres"] = postgres_pids(log_dir)  # backends opened meanwhile count too
        cpu = {role: cpu_total(pids, before[role]) for role, pids in groups.items()}
        # Ours (the two reads) and the idle runners' claim polls during the flush waits count too.
        cpu["transactions"] = transactions(server.env["DATABASE_URL"]) - xacts
        if job.stage != pb.STAGE_SUCCEEDED or job.done != len(asset_ids) or job.failures:
            problems.append(f"{config.name}: job ended {pb.Stage.Name(job.stage)} {job.done}/{job.total}")
            problems += [f"{config.name}: {f.asset_id} {f.key}: {f.reason}" for f in job.failures[:5]]
    finally:
        problems += hosts.stop()
    return elapsed, cpu, problems


def check_thumbnails(client: Client, asset_ids: list[str]) -> list[str]:
    from derivatives.v1 import derivatives_pb2 as pb

    problems = []
    for asset_id in asset_ids:
        asset = client.stub.GetAsset(pb.GetAssetRequest(asset_id=asset_id))
        widths = [d.width for d in asset.derivatives if d.key == THUMB_KEY and d.original_sha512 == asset.sha512]
        if widths != [THUMB_WIDTH]:
            problems.append(f"{asset_id}: {THUMB_KEY} widths {widths}")
    return problems


# --- 2. queue overhead ----------------------------------------------------------------------


def queue_direct(database_url: str, jobs: int) -> dict[str, Any]:
    """claim + finish, and claim + progress + finish, per job on the real queue (alternating), in ms."""
    from core.database import Database
    from core.queue import PostgresQueue
    from core.records import DerivativesPayload, JobKind, Stage

    async def measure() -> dict[str, list[float]]:
        db = Database(database_url, max_size=2, name="bench-queue")
        await db.open()
        try:
            queue = PostgresQueue(db)
            payload = DerivativesPayload(("bench-never-run",), (THUMB_KEY,))
            for _ in range(jobs):
                await queue.enqueue(JobKind.CREATE_DERIVATIVES, payload, 1, "bench-queue")
            times: dict[str, list[float]] = {"claim_finish": [], "claim_progress_finish": []}
            kinds = [JobKind.CREATE_DERIVATIVES]
            for i in range(jobs):
                start = time.perf_counter()
                job = await queue.claim("bench-queue", kinds)
                assert job is not None
                if i % 2:
                    written = await queue.progress(
                        job.job_id, "bench-queue", done=1, total=1, stage=Stage.RUNNING, new_failures=[]
                    )
                    assert written
                assert await queue.finish(job.job_id, "bench-queue", done=1, new_failures=[])
                times["claim_progress_finish" if i % 2 else "claim_finish"].append(1000 * (time.perf_counter() - start))
            return times
        finally:
            await db.close()

    return {name: summary(values) for name, values in asyncio.run(measure()).items()}


def summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {
        "count": len(ms),
        "mean_ms": statistics.mean(ms),
        "median_ms": statistics.median(ms),
        "p99_ms": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
    }


def queue_end_to_end(server: ServerProcess, client: Client, asset_id: str, jobs: int, log_dir: Path) -> dict[str, Any]:
    """`jobs` no-op jobs back to back through one host of 2: ms per job, and CPU ms per job by role."""
    from client.client import TERMINAL
    from derivatives.v1 import derivatives_pb2 as pb

    hosts = WorkerHosts(server, (2,), log_dir)
    try:
        hosts.wait_ready()
        groups = {"hosts": hosts.main_pids(), "server": [server_pids(server)[0]], "postgres": postgres_pids(log_dir)}
        before = {role: cpu_seconds(pids) for role, pids in groups.items()}
        start = time.perf_counter()
        ids = [client.create_derivatives([asset_id], only=[THUMB_KEY], lazy=True).job_id for _ in range(jobs)]
        deadline = time.monotonic() + JOB_TIMEOUT
        pending = list(ids)
        while pending and time.monotonic() < deadline:
            if client.get_job(pending[-1]).stage in TERMINAL:  # the last sent is usually last done: check it first
                pending = [j for j in pending if client.get_job(j).stage not in TERMINAL]
            if pending:
                time.sleep(POLL_SECONDS)
        elapsed = time.perf_counter() - start
        groups["postgres"] = postgres_pids(log_dir)
        cpu = {role: 1000 * cpu_total(pids, before[role]) / jobs for role, pids in groups.items()}
        succeeded = sum(client.get_job(j).stage == pb.STAGE_SUCCEEDED for j in ids)
    finally:
        problems = hosts.stop()
    return {
        "jobs": jobs,
        "seconds": elapsed,
        "ms_per_job": 1000 * elapsed / jobs,
        "cpu_ms_per_job": cpu,
        "succeeded": succeeded,
        "problems": problems + ([f"{jobs - succeeded} no-op jobs did not succeed"] if succeeded != jobs else []),
    }


# --- main -----------------------------------------------------------------------------------


def main() -> int:
    parser = arguments(__doc__, "8 images, 1 repetition, 40 jobs")
    parser.add_argument("--images", type=int, help=f"4000x3000 JPEG originals per job (default {DEFAULT_IMAGES})")
    parser.add_argument("--reps", type=int, help=f"repetitions of each configuration (default {DEFAULT_REPS})")
    parser.add_argument("--jobs", type=int, help=f"jobs for the queue overhead (default {DEFAULT_JOBS})")
    parser.add_argument(
        "--checkout", type=Path, default=ROOT, help="run the worker hosts of another checkout (a before/after)"
    )
    args = parser.parse_args()
    images = args.images or (8 if args.quick else DEFAULT_IMAGES)
    reps = args.reps or (1 if args.quick else DEFAULT_REPS)
    jobs = args.jobs or (40 if args.quick else DEFAULT_JOBS)
    if images < 2 or reps < 1 or jobs < 2:
        parser.error("--images and --jobs must be >= 2, --reps >= 1")
    from client.client import Client

    cores = os.cpu_count() or 1
    started = time.monotonic()
    originals = ensure_originals(images, SIZE, ("jpeg",))
    parameters = {"images": images, "reps": reps, "jobs": jobs, "original_width": SIZE.width}
    parameters |= {"original_height": SIZE.height, "thumb_key": THUMB_KEY, "poll_ms": POLL_SECONDS * 1000}
    parameters["job_wait"] = "WatchProgress (scaling); GetJob polls (no-op jobs)"
    parameters |= {"default_images": DEFAULT_IMAGES, "default_reps": DEFAULT_REPS, "default_jobs": DEFAULT_JOBS}
    if args.checkout.resolve() != ROOT:
        parameters["checkout"] = str(args.checkout)
    results = header("throughput", parameters) | {"targets": TARGETS}
    results["originals_mean_bytes"] = statistics.mean(o.path.stat().st_size for o in originals)
    problems: list[str] = []
    service_dir = WORK / "throughput"
    with running_server(service_dir, "throughput-server-last.log", DERIVATIVES_WORKERS="0") as server:
        with Client(server.address) as client:
            files = [(f"tp-{o.path.stem}", o.path, o.content_type) for o in originals]
            asset_ids = upload_files(client, files, "originals")
            runs = {c.name: Run(c) for c in CONFIGS}
            print(f"measuring {len(CONFIGS)} configurations x {reps} repetitions ...", flush=True)
            load_before = load_average()
            for rep, config in interleaved(reps, CONFIGS):
                seconds, cpu, wrong = run_job(server, client, config, asset_ids, service_dir, args.checkout)
                runs[config.name].seconds.append(seconds)
                runs[config.name].cpu.append(cpu)
                problems += [f"rep {rep}: {p}" for p in wrong]
                print(
                    f"  rep {rep}/{reps}  {config.name:<7} {images / seconds:7.2f} img/s  ({seconds:.2f} s)", flush=True
                )
            problems += check_thumbnails(client, asset_ids)
            results["load_average_scaling"] = {"before": load_before, "after": load_average()}
            results["runs"] = [r.result(images, cores) for r in runs.values()]

            print(f"queue overhead: {jobs} jobs claimed and finished directly ...", flush=True)
            load_before = load_average()
            results["queue_direct"] = queue_direct(server.env["DATABASE_URL"], jobs)
            print(f"queue overhead: {jobs} no-op jobs end to end ...", flush=True)
            e2e = queue_end_to_end(server, client, asset_ids[0], jobs, service_dir)
            problems += e2e.pop("problems")
            results["queue_end_to_end"] = e2e
            results["load_average"] = {"before": results["load_average_scaling"]["before"], "after": load_average()}
            results["load_average_queue"] = {"before": load_before, "after": load_average()}
    results["seconds"] = time.monotonic() - started
    from bench.render import throughput

    print(throughput(results))
    return write_results("throughput", args.out, args.quick, results, problems)


if __name__ == "__main__":
    sys.exit(main())
