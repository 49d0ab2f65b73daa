"""Progress streaming (issue 5): WatchProgress delivery latency with many concurrent watchers, in one run.

Against the real server (filesystem storage, embedded Postgres, DERIVATIVES_WORKERS=2, the
production heartbeat of 5 s), one asyncio client process (grpc.aio) in turn:

(a0) a control: a PDF bundle of a 160-member work of 2400x3200 JPEG scans (each page needs a
     download_medium derivative rendered on the pool during the build), watched by 1 stream;
(a)  the same build of another work (its own assets), watched by 1,000 WatchProgress streams
     opened at once over 10 channels (each its own TCP connection), 3 times;
(a1) 1,000 streams opened on (a)'s finished bundle: the cost of subscribing alone;
(a2) a what-if, no code changed: (a) with the server's pool processes reniced to 10;
(a3) a what-if: (a) with the streams opened by 2 client processes (5 channels each), the client's share;
(b)  200 CreateDerivatives jobs of one 1200x1600 JPEG asset each (only thumb_mini), each
     watched by one stream opened right after its job was created;
(c)  on a server of its own (`--server-processes N` serving processes, DERIVATIVES_SERVER_PROCESSES;
     default 1), the same build of another work watched by 10,000 streams over 100 channels, opened
     by 4 client processes (each its own 25 channels) at once: the final event's delay to every
     watcher, p99 delivery, and the serving processes' RSS per 1,000 watchers.

Latency of every event a watcher receives that is neither its snapshot nor a heartbeat =
receive time - event.updated_at (Postgres now() of the write; same machine, same clock): commit,
NOTIFY, the hub's read, the fan-out, conversion, gRPC and the client. Around each watch the
parent samples the server's RSS, counts its new connections and the CPU seconds of the server
process, its pool, Postgres and the client.

Writes bench/results/progress.json (bench/render.py makes the tables of docs/benchmarks.md).
Exits non-zero only when a watcher did not end with a final SUCCEEDED event or a stream failed,
never for a slow number. Bounded: fixed counts, a timeout on every stream, 127.0.0.1 only.

    .venv/bin/python -m bench.progress [--watchers 1000] [--channels 10] [--reps 3]     # ~4 minutes
    .venv/bin/python -m bench.progress --server-processes 2     # (c) on 2 serving processes
    .venv/bin/python -m bench.progress --quick      # 100 watchers, 30 members, 20 jobs, 1 repetition
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
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
DEFAULTS = {
    "watchers": 1000,
    "channels": 10,
    "members": 160,
    "jobs": 200,
    "reps": 3,
    "big_watchers": 10_000,
    "big_channels": 100,
    "client_processes": 4,
}
QUICK = DEFAULTS | {"watchers": 100, "members": 30, "jobs": 20, "reps": 1, "big_watchers": 1000, "big_channels": 20}
JOB_KEY = "thumb_mini"
PROCESSES = 2
HEARTBEAT_SECONDS = "5.0"  # the production default (the test harness uses 0.5 s)
WATCH_TIMEOUT = 300.0  # seconds; only catches a hang
LAG_TICK = 0.01
# (c)'s streams not yet answered, per client process. Before server/grpc_role.py raised grpc core's queue of calls
# the server has not taken up yet (grpc.server.max_pending_requests, 1,000 by default), 10,000 at once overflowed it
# and ~7,000 were CANCELLED. Kept so that runs compare, and so that a slow machine does not hit core's other limit
# (a call not taken up within 30 s is cancelled): the server takes calls up one at a time either way.
OPENING_PER_PROCESS = 200
SPLIT_PROCESSES = 2  # (a3)'s client processes
TARGETS = {"p99_ms_max": 100.0, "all_final_s_max": 1.0, "big_p99_ms_max": 250.0}


# --- the watcher process (top-level: the spawn pool pickles these by name) --------------------

# One received event: (received, updated_at, seq, stage, snapshot, heartbeat, has result, done, total).
Event = tuple[float, float, int, int, bool, bool, bool, int, int]


@dataclass
class Watched:
    events: list[Event] = field(default_factory=list)
    error: str = ""
    error_at: float = 0.0  # time.time() of the error


@dataclass
class WatchRun:
    """What the watcher process saw (times are time.time(), the clock Postgres uses)."""

    watchers: list[Watched]
    requested: float  # FindOrCreateBundle returned / the first job was being created
    opened: float  # the last stream was opened (the last job created, for jobs)
    loop_lag: list[float]  # seconds late of a 10 ms tick on the client's event loop
    bundle_id: str = ""


async def watch_one(stub: Any, request: Any, sink: Watched, opening: asyncio.Semaphore | None = None) -> None:
    """Watch to the final event; with `opening`, hold one of its slots from the call's start to its first event."""
    from derivatives.v1 import derivatives_pb2 as pb

    held = opening is not None
    if opening is not None:
        await opening.acquire()
    try:
        async for e in stub.WatchProgress(request, timeout=WATCH_TIMEOUT):
            if held and opening is not None:
                opening.release()
                held = False
            updated = e.updated_at.seconds + e.updated_at.nanos / 1e9
            result = e.HasField("bundle") or e.HasField("job")
            sink.events.append((time.time(), updated, e.seq, e.stage, e.snapshot, e.heartbeat, result, e.done, e.total))
            if e.stage in (pb.STAGE_SUCCEEDED, pb.STAGE_FAILED):
                return
    except Exception as exc:  # a failed stream is reported as wrong output, not raised
        sink.error, sink.error_at = f"{type(exc).__name__}: {exc}"[:300], time.time()
    finally:
        if held and opening is not None:
            opening.release()


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


def watch_share(address: str, watchers: int, channels: int, opening: int, ready: Any, go: Any) -> WatchRun:
    """One client process's share of (c): its channels connected, it says `ready`, takes the bundle id
    from `go` (a Manager queue), then opens its streams at once."""
    return run_async(_watch_share, address, watchers, channels, opening, ready, go)


async def _watch_share(address: str, watchers: int, channels: int, opening: int, ready: Any, go: Any) -> WatchRun:
    from derivatives.v1 import derivatives_pb2 as pb

    lag: list[float] = []
    async with session(address, channels, lag) as stubs:
        ready.put(os.getpid())
        bundle_id = await asyncio.to_thread(go.get, True, 120.0)
        requested = time.time()
        watch = pb.WatchProgressRequest(bundle_id=bundle_id)
        sinks = [Watched() for _ in range(watchers)]
        limit = asyncio.Semaphore(opening) if opening else None
        tasks = [asyncio.create_task(watch_one(stubs[i % channels], watch, sinks[i], limit)) for i in range(watchers)]
        opened = time.time()
        await asyncio.gather(*tasks)
    return WatchRun(sinks, requested, opened, lag, bundle_id)


def worker_pid(delay: float) -> int:
    time.sleep(delay)
    return os.getpid()


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
    serving_before: int = 0  # summed RSS of the serving processes (the server, or its server.child processes)
    serving_peak: int = 0


def serving_pids(server: ServerProcess) -> list[int]:
    """The processes that serve gRPC: the server, or with DERIVATIVES_SERVER_PROCESSES > 1 its children
    `python -m server.child`."""
    pids = server_pids(server)
    children = []
    for pid in pids[1:]:
        try:
            if "server.child" in psutil().Process(pid).cmdline():
                children.append(pid)
        except psutil().Error:
            continue
    return children or pids[:1]


def server_connections(server: ServerProcess) -> int:
    count = 0
    for pid in serving_pids(server):
        try:
            conns = psutil().Process(pid).net_connections(kind="tcp")
        except psutil().Error:
            continue
        count += sum(
            1 for c in conns if c.status == psutil().CONN_ESTABLISHED and c.laddr and c.laddr.port == server.port
        )
    return count


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
    observed = Observed(rss_before=rss_of(server_pids(server)), serving_before=rss_of(serving_pids(server))[0])
    before = {name: cpu_seconds(pids()) for name, pids in parties.items()}
    start = time.perf_counter()
    with RssSampler(lambda: server_pids(server)) as sampler, RssSampler(lambda: serving_pids(server)) as serving:
        yield observed
    observed.seconds = time.perf_counter() - start
    observed.rss_peak = (sampler.peak, sampler.peak_first)
    observed.serving_peak = serving.peak
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
            what = f"{w.error} ({w.error_at - run.requested:.1f} s after the request)" if w.error else ""
            problems.append(f"watcher {i}: {what or 'no final SUCCEEDED event with a result'} (last: {last})")
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
        "rss_serving_bytes": {"before": observed.serving_before, "peak": observed.serving_peak},
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
        subscribed = max(snapshots, default=run.requested)  # every stream had its snapshot: the steady state
        out["latency_after_subscribed_ms"] = spread([1000 * (e[0] - e[1]) for e in live if e[1] >= subscribed])
        out["coalesced_snapshots"] = sum(1 for w in run.watchers for e in w.events[1:] if e[4] and not e[5])
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


def conversion_cost(n: int = 20_000) -> tuple[float, float]:
    """µs per message of the per-watcher work that is pure CPU: convert.progress_event + serialization (what
    each watcher paid before), and finding the bytes another watcher's message already made (what it pays now)."""
    import datetime as dt

    from core.progress import Update
    from core.records import ProgressEvent, Stage
    from server import convert

    now = dt.datetime.now(dt.UTC)
    event = ProgressEvent(uuid.uuid4(), seq=42, stage=Stage.RUNNING, done=17, total=160, at=now, attempt=1)
    start = time.perf_counter()
    for _ in range(n):
        convert.progress_event(Update(event)).SerializeToString()
    full = 1e6 * (time.perf_counter() - start) / n
    messages = convert.ProgressMessages()
    update = Update(event)
    start = time.perf_counter()
    for _ in range(n):
        messages.of(update)
    return full, 1e6 * (time.perf_counter() - start) / n


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

    server: ServerProcess | None
    pool: Executor | None
    parties: dict[str, Callable[[], list[int]]]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def empty(cls) -> Cases:
        return cls(None, None, {})

    def run(self, name: str, label: str, fn: Callable[..., Any], *args: Any) -> WatchRun:
        print(f"{label} ...", flush=True)
        assert self.server is not None and self.pool is not None
        connected = server_connections(self.server)  # the setup client's
        with observing(self.server, self.parties) as observed:
            future = self.pool.submit(run_async, fn, *args)
            wait([future], timeout=2.0)  # then count the connections the watch opened: its streams are open
            if not future.done():
                observed.connections = server_connections(self.server) - connected
            watched = future.result(timeout=WATCH_TIMEOUT)
        kind = "jobs" if name == "jobs" else "finished" if name == "finished" else "build"
        self._add(name, label, watched, observed, kind)
        return watched

    def run_split(
        self, name: str, label: str, pool: Executor, manager: Any, client: Any, work_id: str, w: int, c: int
    ) -> WatchRun:
        """A build's watch from the processes of `pool`, each with its share of the streams and channels, as (c)."""
        print(f"{label} ...", flush=True)
        assert self.server is not None
        k = pool._max_workers  # type: ignore[attr-defined]
        pids = sorted(set(pool.map(worker_pid, [0.2] * k)))
        with observing(self.server, self.parties | {"client": lambda: pids}) as observed:
            watched = split_watch(self.server, client, pool, manager, k, work_id, w, c, 0, observed)
        self._add(name, label, watched, observed, "build")
        return watched

    def _add(self, name: str, label: str, watched: WatchRun, observed: Observed, kind: str) -> None:
        result, problems = summarise(watched, observed, kind)
        self.results[name] = {"label": label} | result
        self.problems += [f"{name}: {p}" for p in problems]
        lat = {k: round(v, 1) for k, v in result["latency_ms"].items() if v is not None}
        print(f"  {result['live_events']} live events, latency ms {lat}; {result['finals_ok']} finals", flush=True)


def split_watch(
    server: ServerProcess,
    client: Any,
    pool: Executor,
    manager: Any,
    k: int,
    work_id: str,
    watchers: int,
    channels: int,
    opening: int,
    observed: Observed,
) -> WatchRun:
    """FindOrCreateBundle (PDF) of `work_id` once `k` client processes of `pool` have their share of `channels`
    connected, then their share of `watchers` streams on it (at most `opening` per process not answered yet)."""
    from derivatives.v1 import derivatives_pb2 as pb

    ready, go = manager.Queue(), manager.Queue()
    shares = [
        (watchers * (i + 1) // k - watchers * i // k, channels * (i + 1) // k - channels * i // k) for i in range(k)
    ]
    connected = server_connections(server)
    futures = [pool.submit(watch_share, server.address, sw, sc, opening, ready, go) for sw, sc in shares]
    for _ in range(k):
        ready.get(timeout=120)
    observed.connections = server_connections(server) - connected
    request = pb.FindOrCreateBundleRequest(work_id=work_id, kind=pb.BUNDLE_KIND_PDF)
    bundle_id = client.stub.FindOrCreateBundle(request).bundle_id
    requested = time.time()
    for _ in range(k):
        go.put(bundle_id)
    runs = [f.result(timeout=WATCH_TIMEOUT) for f in futures]
    return WatchRun(
        [s for r in runs for s in r.watchers],
        requested,
        max(r.opened for r in runs),
        [x for r in runs for x in r.loop_lag],
        bundle_id,
    )


def big_case(size: dict[str, int], scans: list[Path], server_processes: int, load: float) -> tuple[Any, list[str]]:
    """(c): a server of its own with `server_processes` serving processes; the build of a work of its own
    watched by big_watchers streams over big_channels, opened by client_processes processes."""
    from client.client import Client

    n, w, c, k = size["members"], size["big_watchers"], size["big_channels"], size["client_processes"]
    service_dir = WORK / "progress-big-service"
    members = [f"big-{i + 1:04d}" for i in range(n)]
    with (
        running_server(
            service_dir,
            "progress-big-server-last.log",
            DERIVATIVES_WORKERS=str(PROCESSES),
            DERIVATIVES_PROGRESS_HEARTBEAT=HEARTBEAT_SECONDS,
            DERIVATIVES_SERVER_PROCESSES=str(server_processes),
        ) as server,
        Client(server.address) as client,
        spawn_pool(k) as pool,
        multiprocessing.get_context("spawn").Manager() as manager,
    ):
        upload_files(client, [(a, scans[i % len(scans)], "image/jpeg") for i, a in enumerate(members)], "scans")
        put_work(client, "work-big", "Progress bench big", members)
        client_pids = sorted(set(pool.map(worker_pid, [0.2] * k)))  # each process sleeps: k distinct ones
        serving = set(serving_pids(server))
        parties = {
            "server": lambda: serving_pids(server),
            "pool": lambda: [p for p in server_pids(server) if p not in serving],
            "postgres": lambda: postgres_pids(service_dir / "pg"),
            "client": lambda: client_pids,
        }
        label = f"(c) {w:,} watchers over {c} channels, {k} client processes, {server_processes} serving process(es)"
        print(f"{label} ...", flush=True)
        with observing(server, parties) as observed:
            watched = split_watch(server, client, pool, manager, k, "work-big", w, c, OPENING_PER_PROCESS, observed)
    result, problems = summarise(watched, observed, "build")
    before, peak = observed.serving_before, observed.serving_peak
    result |= {
        "label": label,
        "server_processes": server_processes,
        "client_processes": k,
        "load_before": load,
        "rss_serving_per_1000_watchers_bytes": (peak - before) * 1000 / w,
    }
    lat = {q: round(v, 1) for q, v in result["latency_ms"].items() if v is not None}
    print(f"  {result['live_events']} live events, latency ms {lat}; {result['finals_ok']} finals", flush=True)
    return result, [f"big: {p}" for p in problems]


def main() -> int:
    from client.client import Client

    parser = arguments(__doc__, ", ".join(f"{v} {k}" for k, v in QUICK.items()))
    for name, default in DEFAULTS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, help=f"default {default}")
    parser.add_argument(
        "--server-processes", type=int, default=1, help="(c)'s serving processes (DERIVATIVES_SERVER_PROCESSES)"
    )
    parser.add_argument("--only-big", action="store_true", help="run (c) alone (its result file: progress-big.json)")
    args = parser.parse_args()
    size = {k: getattr(args, k) or (QUICK if args.quick else DEFAULTS)[k] for k in DEFAULTS}
    if min(size.values()) < 1:
        parser.error("every count must be >= 1")
    n, w, c, reps = size["members"], size["watchers"], size["channels"], size["reps"]
    started = time.monotonic()
    scans, books = SCAN_PAGES.ensure(), BOOK_PAGES.ensure()
    parameters = size | {
        "defaults": DEFAULTS,
        "heartbeat_s": float(HEARTBEAT_SECONDS),
        "processes": PROCESSES,
        "server_processes": args.server_processes,
    }
    results = header("progress", parameters) | {"targets": TARGETS, "scan_pages": SCAN_PAGES.describe(scans)}
    cases = Cases.empty()
    if not args.only_big:
        names = ["control", *map(str, range(1, reps + 1)), "split", "niced"]
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
            spawn_pool(SPLIT_PROCESSES) as split_pool,
            multiprocessing.get_context("spawn").Manager() as manager,
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
            cases = Cases(server, pool, parties, cases.results, cases.problems)
            load_before = load_average()
            address = server.address
            cases.run(
                "control",
                f"(a0) control: 1 watcher, {n}-member PDF build",
                watch_bundle,
                address,
                "work-control",
                "",
                1,
                1,
            )
            for r in range(1, reps + 1):
                label = f"(a) {w:,} watchers on one {n}-member PDF build, repetition {r}"
                watched = cases.run(f"bundle{r}", label, watch_bundle, address, f"work-{r}", "", w, c)
                if r == 1:
                    bundle_id = watched.bundle_id
            label = f"(a3) as (a), the watchers in {SPLIT_PROCESSES} client processes (what-if: the client's share)"
            cases.run_split("split", label, split_pool, manager, client, "work-split", w, c)
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
    load_big = load_average()
    big, big_problems = big_case(size, scans, args.server_processes, load_big)
    cases.results["big"] = big
    cases.problems += big_problems
    results.setdefault("load_average", {"before": load_big})["after_big"] = load_average()
    conversion, cached = conversion_cost()
    results |= {"conversion_us": conversion, "cached_message_us": cached, "cases": cases.results}
    results["seconds"] = time.monotonic() - started
    if args.only_big:
        print(json.dumps(big, indent=2))
        return write_results("progress-big", args.out, args.quick, results, cases.problems)
    from bench.render import progress

    print(progress(results))
    return write_results("progress", args.out, args.quick, results, cases.problems)


if __name__ == "__main__":
    sys.exit(main())
