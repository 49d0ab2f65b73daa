"""Progress streaming (issue 5): WatchProgress delivery latency with many concurrent watchers, in one run.

Against the real server (filesystem storage, embedded Postgres, DERIVATIVES_WORKERS=2, the
production heartbeat of 5 s), one asyncio client process (grpc.aio) in turn:

(a0) a control: a PDF bundle of a 160-member work of 2400x3200 JPEG scans (each page needs a
     download_medium derivative rendered on the pool during the build), watched by 1 stream;
(a)  the same build of another work (its own assets), watched by 1,000 WatchProgress streams
     opened at once over 10 channels (each its own TCP connection), 3 times;
(a1) 1,000 streams opened on (a)'s finished bundle: the cost of subscribing alone;
(a2) a what-if, no code changed: (a) with the server's pool processes reniced to 10;
(b)  200 CreateDerivatives jobs of one 1200x1600 JPEG asset each (only thumb_mini), each
     watched by one stream opened right after its job was created.

Latency of every event a watcher receives that is neither its snapshot nor a heartbeat =
receive time - event.updated_at (Postgres now() of the write; same machine, same clock): commit,
NOTIFY, the hub's read, the fan-out, conversion, gRPC and the client. Around each watch the
parent samples the server's RSS, counts its new connections and the CPU seconds of the server
process, its pool, Postgres and the client.

Writes bench/results/progress.json (bench/render.py makes the tables of docs/benchmarks.md).
Exits non-zero only when a watcher did not end with a final SUCCEEDED event or a stream failed,
never for a slow number. Bounded: fixed counts, a timeout on every stream, 127.0.0.1 only.

    .venv/bin/python -m bench.progress [--watchers 1000] [--channels 10] [--reps 3]     # ~2 minutes
    .venv/bin/python -m bench.progress --quick      # 100 watchers, 30 members, 20 jobs, 1 repetition
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor, wait
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import (
    BOOK_PAGES,
    WORK,
    PageSet,
    RssSampler,
    arguments,
    cpu_seconds,
    header,
    load_average,
    process_tree,
    psutil,
    put_work,
    rss_of,
    running_server,
    server_pids,
    spawn_pool,
    upload_files,
    write_results,
)

if TYPE_CHECKING:
    from tests.harness import ServerProcess

SCAN_PAGES = PageSet("pages-2400-v1", 2400, 3200, 88, 20)  # wider than download_medium: rendered per page
DEFAULTS = {"watchers": 1000, "channels": 10, "members": 160, "jobs": 200, "reps": 3}
QUICK = {"watchers": 100, "channels": 10, "members": 30, "jobs": 20, "reps": 1}
JOB_KEY = "thumb_mini"
PROCESSES = 2
HEARTBEAT_SECONDS = "5.0"  # the production default (the test harness uses 0.5 s)
WATCH_TIMEOUT = 300.0  # seconds; only catches a hang
LAG_TICK = 0.01
TARGETS = {"p99_ms_max": 100.0, "all_final_s_max": 1.0}


# --- the watcher process (top-level: the spawn pool pickles these by name) --------------------

# One received event: (received, updated_at, seq, stage, snapshot, heartbeat, has result, done, total).
Event = tuple[float, float, int, int, bool, bool, bool, int, int]


@dataclass
class Watched:
    events: list[Event] = field(default_factory=list)
    error: str = ""


@dataclass
class WatchRun:
    """What the watcher process saw (times are time.time(), the clock Postgres uses)."""

    watchers: list[Watched]
    requested: float  # FindOrCreateBundle returned / the first job was being created
    opened: float  # the last stream was opened (the last job created, for jobs)
    loop_lag: list[float]  # seconds late of a 10 ms tick on the client's event loop
    bundle_id: str = ""


async def watch_one(stub: Any, request: Any, sink: Watched) -> None:
    from derivatives.v1 import derivatives_pb2 as pb

    try:
        async for e in stub.WatchProgress(request, timeout=WATCH_TIMEOUT):
            updated = e.updated_at.seconds + e.updated_at.nanos / 1e9
            result = e.HasField("bundle") or e.HasField("job")
            sink.events.append((time.time(), updated, e.seq, e.stage, e.snapshot, e.heartbeat, result, e.done, e.total))
            if e.stage in (pb.STAGE_SUCCEEDED, pb.STAGE_FAILED):
                return
    except Exception as exc:  # a failed stream is reported as wrong output, not raised
        sink.error = f"{type(exc).__name__}: {exc}"[:300]


@asynccontextmanager
async def session(address: str, count: int, lag: list[float]) -> AsyncIterator[list[Any]]:
    """Stubs on `count` channels, each its own connection (a local subchannel pool), ready before any timing;
    the event loop's lateness sampled meanwhile."""
    import grpc

    from derivatives.v1 import derivatives_pb2_grpc as pb_grpc

    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 << 20)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(count)]
    await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), 30)
    stop = asyncio.Event()

    async def sample() -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            before = loop.time()
            await asyncio.sleep(LAG_TICK)
            lag.append(loop.time() - before - LAG_TICK)

    task = asyncio.create_task(sample())
    try:
        yield [pb_grpc.DerivativeServiceStub(c) for c in channels]
    finally:
        stop.set()
        await task
        await asyncio.gather(*(c.close() for c in channels))


async def watch_bundle(address: str, work_id: str, bundle_id: str, watchers: int, channels: int) -> WatchRun:
    """FindOrCreateBundle (PDF) unless `bundle_id` is given, then `watchers` streams on it over `channels`."""
    from derivatives.v1 import derivatives_pb2 as pb

    lag: list[float] = []
    async with session(address, channels, lag) as stubs:
        if not bundle_id:
            request = pb.FindOrCreateBundleRequest(work_id=work_id, kind=pb.BUNDLE_KIND_PDF)
            bundle_id = (await stubs[0].FindOrCreateBundle(request)).bundle_id
        requested = time.time()
        watch = pb.WatchProgressRequest(bundle_id=bundle_id)
        sinks = [Watched() for _ in range(watchers)]
        tasks = [asyncio.create_task(watch_one(stubs[i % channels], watch, sinks[i])) for i in range(watchers)]
        opened = time.time()
        await asyncio.gather(*tasks)
    return WatchRun(sinks, requested, opened, lag, bundle_id)


async def watch_jobs(address: str, asset_ids: list[str], key: str, channels: int) -> WatchRun:
    """One CreateDerivatives job per asset, each watched by one stream opened as soon as it exists."""
    from derivatives.v1 import derivatives_pb2 as pb

    lag: list[float] = []
    async with session(address, channels, lag) as stubs:
        sinks = [Watched() for _ in asset_ids]
        tasks = []
        requested = time.time()
        for i, asset_id in enumerate(asset_ids):
            stub = stubs[i % channels]
            job = await stub.CreateDerivatives(pb.CreateDerivativesRequest(asset_ids=[asset_id], only=[key]))
            tasks.append(asyncio.create_task(watch_one(stub, pb.WatchProgressRequest(job_id=job.job_id), sinks[i])))
        opened = time.time()
        await asyncio.gather(*tasks)
    return WatchRun(sinks, requested, opened, lag)


def run_async(fn: Callable[..., Any], *args: Any) -> WatchRun:
    result: WatchRun = asyncio.run(fn(*args))
    return result


# --- what the parent measures around a watch ------------------------------------------------


@dataclass
class Observed:
    seconds: float = 0.0
    rss_before: tuple[int, int] = (0, 0)  # (server tree, server process)
    rss_peak: tuple[int, int] = (0, 0)
    cpu: dict[str, float] = field(default_factory=dict)  # party -> CPU seconds during the watch
    connections: int | None = None  # client connections the watch opened (None: over before they were counted)


def server_connections(server: ServerProcess) -> int:
    assert server.proc is not None
    conns = psutil().Process(server.proc.pid).net_connections(kind="tcp")
    return sum(1 for c in conns if c.status == psutil().CONN_ESTABLISHED and c.laddr and c.laddr.port == server.port)


def postgres_pids(pg_dir: Path) -> list[int]:
    """The postmaster serving `pg_dir` and its backends."""
    for proc in psutil().process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if cmdline and cmdline[0].endswith("postgres") and str(pg_dir) in " ".join(cmdline):
            return process_tree(proc.pid)
    return []


@contextmanager
def observing(server: ServerProcess, parties: dict[str, Callable[[], list[int]]]) -> Iterator[Observed]:
    """RSS of the server (sampled every 50 ms) and CPU seconds of each party, around a watch."""
    observed = Observed(rss_before=rss_of(server_pids(server)))
    before = {name: cpu_seconds(pids()) for name, pids in parties.items()}
    start = time.perf_counter()
    with RssSampler(lambda: server_pids(server)) as sampler:
        yield observed
    observed.seconds = time.perf_counter() - start
    observed.rss_peak = (sampler.peak, sampler.peak_first)
    for name, pids in parties.items():
        observed.cpu[name] = sum(t - before[name].get(pid, 0.0) for pid, t in cpu_seconds(pids()).items())


# --- statistics -----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))]


def spread(values: list[float], qs: tuple[int, ...] = (50, 99, 100)) -> dict[str, float | None]:
    return {("max" if q == 100 else f"p{q}"): percentile(values, q) for q in qs}


def is_live(e: Event) -> bool:
    return not e[4] and not e[5]  # neither the snapshot nor a heartbeat


def summarise(run: WatchRun, observed: Observed, kind: str) -> tuple[dict[str, Any], list[str]]:
    """The numbers of one watch, and what was wrong (a watcher without a final SUCCEEDED event with its result).

    `kind`: "build" (every watcher on one build running during the watch), "finished" (on a finished
    target), "jobs" (each watcher on its own job).
    """
    from derivatives.v1 import derivatives_pb2 as pb

    problems, finals = [], []
    for i, w in enumerate(run.watchers):
        last = w.events[-1] if w.events else None
        if w.error or last is None or last[3] != pb.STAGE_SUCCEEDED or not last[6] or last[7] != last[8]:
            problems.append(f"watcher {i}: {w.error or 'no final SUCCEEDED event with a result'} (last: {last})")
        else:
            finals.append(last)
    live = [e for w in run.watchers for e in w.events if is_live(e)]
    snapshots = [w.events[0][0] for w in run.watchers if w.events]
    out: dict[str, Any] = {
        "watchers": len(run.watchers),
        "finals_ok": len(finals),
        "live_events": len(live),
        "messages": sum(len(w.events) for w in run.watchers),
        "events_per_watcher": statistics.mean(sum(map(is_live, w.events)) for w in run.watchers),
        "latency_ms": spread([1000 * (e[0] - e[1]) for e in live]),
        "opened_s": run.opened - run.requested,
        "first_snapshot_s": min(snapshots, default=run.requested) - run.requested,
        "all_subscribed_s": max(snapshots, default=run.requested) - run.requested,
        "client_loop_lag_ms": spread([1000 * x for x in run.loop_lag], (99, 100)),
        "wall_s": observed.seconds,
        "rss_before_bytes": {"tree": observed.rss_before[0], "process": observed.rss_before[1]},
        "rss_peak_bytes": {"tree": observed.rss_peak[0], "process": observed.rss_peak[1]},
        "cpu_s": observed.cpu,
        "new_connections": observed.connections,
    }
    if kind != "finished" and finals:
        delays = [1000 * (f[0] - f[1]) for f in finals]  # each final from its own updated_at (its completion)
        out["final_after_completion_ms"] = {"first": min(delays), "last": max(delays)}
        out["completed_s"] = max(f[1] for f in finals) - run.requested
    if kind == "jobs":  # QUEUED (seq 1) -> RUNNING (seq 2), from the events' updated_at, where a watcher saw both
        seqs = [{e[2]: e[1] for e in reversed(w.events)} for w in run.watchers]
        claims = [1000 * (s[2] - s[1]) for s in seqs if 1 in s and 2 in s]
        out["queued_to_running_ms"] = spread(claims, (50, 90, 100)) | {"jobs": len(claims)}
    if kind == "build" and live:
        first: dict[int, float] = {}
        last_seen: dict[int, float] = {}
        written: dict[int, float] = {}
        for received, updated, seq, *_ in live:
            first[seq] = min(first.get(seq, received), received)
            last_seen[seq] = max(last_seen.get(seq, received), received)
            written[seq] = updated
        out["distinct_events"] = len(first)
        out["first_delivery_ms"] = spread([1000 * (first[s] - written[s]) for s in first], (50, 100))
        out["fan_out_spread_ms"] = spread([1000 * (last_seen[s] - first[s]) for s in first], (50, 100))
        out["timeline"] = []  # over the build, in 8 equal slices by write time
        width = (max(written.values()) + 1e-6 - run.requested) / 8
        for k in range(8):
            lo, hi = run.requested + k * width, run.requested + (k + 1) * width
            latencies = [1000 * (e[0] - e[1]) for e in live if lo <= e[1] < hi]
            slot = {"from_s": lo - run.requested, "to_s": hi - run.requested, "events": len(latencies)}
            out["timeline"].append(slot | {"subscribed": sum(1 for t in snapshots if t < hi)} | spread(latencies))
    return out, problems


def conversion_cost(n: int = 20_000) -> float:
    """µs per message of the per-watcher work that is pure CPU: convert.progress_event + serialization."""
    import datetime as dt

    from core.progress import Update
    from core.records import ProgressEvent, Stage
    from server import convert

    now = dt.datetime.now(dt.UTC)
    event = ProgressEvent(uuid.uuid4(), seq=42, stage=Stage.RUNNING, done=17, total=160, at=now, attempt=1)
    start = time.perf_counter()
    for _ in range(n):
        convert.progress_event(Update(event)).SerializeToString()
    return 1e6 * (time.perf_counter() - start) / n


# --- the run --------------------------------------------------------------------------------


def set_nice(pids: list[int], value: int) -> None:
    for pid in pids:
        try:
            psutil().Process(pid).nice(value)
        except psutil().Error as exc:
            print(f"warning: cannot renice {pid}: {exc}", file=sys.stderr)


@dataclass
class Cases:
    """Runs watches in the client process while observing the server; collects their numbers."""

    server: ServerProcess
    pool: Executor
    parties: dict[str, Callable[[], list[int]]]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def run(self, name: str, label: str, fn: Callable[..., Any], *args: Any) -> WatchRun:
        print(f"{label} ...", flush=True)
        connected = server_connections(self.server)  # the setup client's
        with observing(self.server, self.parties) as observed:
            future = self.pool.submit(run_async, fn, *args)
            wait([future], timeout=2.0)  # then count the connections the watch opened: its streams are open
            if not future.done():
                observed.connections = server_connections(self.server) - connected
            watched = future.result(timeout=WATCH_TIMEOUT)
        kind = "jobs" if name == "jobs" else "finished" if name == "finished" else "build"
        result, problems = summarise(watched, observed, kind)
        self.results[name] = {"label": label} | result
        self.problems += [f"{name}: {p}" for p in problems]
        lat = {k: round(v, 1) for k, v in result["latency_ms"].items() if v is not None}
        print(f"  {result['live_events']} live events, latency ms {lat}; {result['finals_ok']} finals", flush=True)
        return watched


def main() -> int:
    from client.client import Client

    parser = arguments(__doc__, ", ".join(f"{v} {k}" for k, v in QUICK.items()))
    for name, default in DEFAULTS.items():
        parser.add_argument(f"--{name}", type=int, help=f"default {default}")
    args = parser.parse_args()
    size = {k: getattr(args, k) or (QUICK if args.quick else DEFAULTS)[k] for k in DEFAULTS}
    if min(size.values()) < 1:
        parser.error("every count must be >= 1")
    n, w, c, reps = size["members"], size["watchers"], size["channels"], size["reps"]
    started = time.monotonic()
    scans, books = SCAN_PAGES.ensure(), BOOK_PAGES.ensure()
    parameters = size | {"defaults": DEFAULTS, "heartbeat_s": float(HEARTBEAT_SECONDS), "processes": PROCESSES}
    results = header("progress", parameters) | {"targets": TARGETS, "scan_pages": SCAN_PAGES.describe(scans)}
    names = ["control", *map(str, range(1, reps + 1)), "niced"]
    works = {name: [f"{name}-{i + 1:04d}" for i in range(n)] for name in names}
    small = [f"small-{i + 1:04d}" for i in range(size["jobs"])]
    service_dir = WORK / "progress-service"
    with (
        running_server(
            service_dir,
            "progress-server-last.log",
            DERIVATIVES_WORKERS=str(PROCESSES),
            DERIVATIVES_PROGRESS_HEARTBEAT=HEARTBEAT_SECONDS,
        ) as server,
        Client(server.address) as client,
        spawn_pool(1) as pool,
    ):
        pages = [a for ids in works.values() for a in ids]
        upload_files(client, [(a, scans[i % len(scans)], "image/jpeg") for i, a in enumerate(pages)], "scans")
        upload_files(client, [(a, books[i % len(books)], "image/jpeg") for i, a in enumerate(small)], "small pages")
        for work_id, ids in works.items():
            put_work(client, f"work-{work_id}", f"Progress bench {work_id}", ids)
        client_pid = pool.submit(os.getpid).result()
        parties = {
            "server": lambda: server_pids(server)[:1],
            "pool": lambda: server_pids(server)[1:],
            "postgres": lambda: postgres_pids(service_dir / "pg"),
            "client": lambda: [client_pid],
        }
        cases = Cases(server, pool, parties)
        load_before = load_average()
        address = server.address
        cases.run(
            "control", f"(a0) control: 1 watcher, {n}-member PDF build", watch_bundle, address, "work-control", "", 1, 1
        )
        for r in range(1, reps + 1):
            label = f"(a) {w:,} watchers on one {n}-member PDF build, repetition {r}"
            watched = cases.run(f"bundle{r}", label, watch_bundle, address, f"work-{r}", "", w, c)
            if r == 1:
                bundle_id = watched.bundle_id
        label = f"(a1) {w:,} watchers opened on (a)'s finished bundle"
        cases.run("finished", label, watch_bundle, address, "", bundle_id, w, c)
        pool_pids = server_pids(server)[1:]
        set_nice(pool_pids, 10)
        try:
            label = "(a2) as (a), pool processes at nice 10 (what-if)"
            cases.run("niced", label, watch_bundle, address, "work-niced", "", w, c)
        finally:
            set_nice(pool_pids, 0)
        label = f"(b) {size['jobs']} jobs, 1 watcher each"
        cases.run("jobs", label, watch_jobs, address, small, JOB_KEY, min(c, size["jobs"]))
        results["load_average"] = {"before": load_before, "after": load_average()}
    results |= {"conversion_us": conversion_cost(), "cases": cases.results, "seconds": time.monotonic() - started}
    from bench.render import progress

    print(progress(results))
    return write_results("progress", args.out, args.quick, results, cases.problems)


if __name__ == "__main__":
    sys.exit(main())
