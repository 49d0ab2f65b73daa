"""Prometheus metrics: what is counted, and the one endpoint per host that serves them (docs/metrics.md).

One endpoint per host (`DERIVATIVES_METRICS_LISTEN`, empty = off), aggregated across the host's
processes with prometheus-client's multiprocess mode: every process (the top one, serving children,
pool processes) writes its values to memory-mapped files in one directory, and the endpoint's
`MultiProcessCollector` merges them at each scrape. Counters and histograms are summed, also over
processes that have exited; gauges use a live mode (`livesum`, or `liveall` with a `pid` label for a
value that cannot be summed, such as a pool process's RSS) whose files go when the process is
marked dead (`process_exited`, and a sweep of dead pids at every scrape).

The multiprocess trap, and how it is avoided: prometheus-client picks the storage of every value it
creates from `PROMETHEUS_MULTIPROC_DIR` as it was when `prometheus_client.values` was imported;
a metric made before that variable is set stays private to its process. So here:

- no metric object exists at import: `get()` makes them all on first use, in each process;
- `prepare_multiprocess()`, called by the TOP process of a host before it spawns anything (the pool,
  serving children), makes a fresh private directory (`tempfile.mkdtemp`: empty, so "wiped at start"),
  sets the variable in `os.environ` (children and pool processes inherit it, and import
  prometheus-client afresh under it), switches `values.ValueClass` to the multiprocess class for this
  already-running process, and removes the directory at a clean exit. It refuses to run once a
  metric was made in this process (that metric would not be shared);
- without the variable (metrics off) the same calls count into private in-process values: cheap,
  never served.

Values that live in Postgres rather than in any one process (jobs by kind and stage, the oldest
ready job's wait, the bundles stored and their bytes) are read by the endpoint at each scrape
(`DatabaseCollector`, two named queries). Values a process can only sample (its Postgres pool's
usage, its RSS) are set every `SAMPLE_SECONDS` by one daemon thread per process (`sample`).

Conventions: every name starts with `derivatives_`; counters end in `_total`, durations are
histograms in `_seconds`, sizes in `_bytes`; label values come from closed sets (enums, method
names, status codes, `failure_class`), never an asset, work, job or bundle id.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import glob
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from core import pids
from core.config import split_listen
from core.records import BundleKind, FailureClass, JobKind, Stage

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from core.database import Database
    from core.host import HostContext

log = logging.getLogger("derivatives.metrics")

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "derivatives_"
SAMPLE_SECONDS = 1.0  # how often a process samples its pool usage and RSS
SCRAPE_QUERY_SECONDS = 5.0  # the scrape's Postgres reads give up after this long (their series are left out)

# Histogram buckets, in seconds.
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STREAM_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0)
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
ASSET_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class JobOutcome(StrEnum):
    """How one attempt of a job ended, as the runner saw it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # for good
    RETRIED = "retried"  # back in the queue after a backoff
    REQUEUED = "requeued"  # the runner shut down
    LEASE_LOST = "lease_lost"  # another runner took it over


class BundleLookup(StrEnum):
    """What FindOrCreateBundle found: the cache's hit, a build it started, one already running, a recent error."""

    HIT = "hit"
    MISS = "miss"
    BUILDING = "building"
    FAILED = "failed"


class Eviction(StrEnum):
    IDLE = "idle"
    BUDGET = "budget"


class Metrics:
    """Every metric a process writes. Made once per process, on first use (`get()`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        rpc = ["service", "method", "type"]
        # --- gRPC (server/metrics_interceptor.py) ---
        self.rpcs = Counter(
            "derivatives_grpc_server_handled_total", "RPCs completed, by method and status code", [*rpc, "code"],
            registry=r,
        )  # fmt: skip
        self.rpc_seconds = Histogram(
            "derivatives_grpc_server_handling_seconds",
            "Time to answer a unary-response RPC (unary and client-streaming)",
            rpc,
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self.stream_seconds = Histogram(
            "derivatives_grpc_server_stream_seconds",
            "Lifetime of a server-streaming RPC (WatchProgress, ReadBundle, health Watch)",
            rpc,
            buckets=STREAM_BUCKETS,
            registry=r,
        )
        self.streams_open = Gauge(
            "derivatives_grpc_server_streams_open", "Streaming RPCs in progress", rpc,
            multiprocess_mode="livesum", registry=r,
        )  # fmt: skip
        # --- jobs (worker/runner.py) ---
        self.jobs_claimed = Counter(
            "derivatives_jobs_claimed_total", "Job attempts claimed by this host's runner", ["kind"], registry=r
        )
        self.jobs_ended = Counter(
            "derivatives_jobs_ended_total", "Job attempts ended, by outcome", ["kind", "outcome"], registry=r
        )
        self.job_seconds = Histogram(
            "derivatives_job_duration_seconds",
            "One attempt of a job, from its claim to its end, by outcome",
            ["kind", "outcome"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "derivatives_job_queue_wait_seconds",
            "From a job's creation to its first claim",
            ["kind"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        # --- assets (worker/render.py) ---
        self.asset_seconds = Histogram(
            "derivatives_asset_duration_seconds",
            "Rendering one asset's derivatives on the pool: read, decode, derive, encode, upload (slot wait excluded)",
            buckets=ASSET_BUCKETS,
            registry=r,
        )
        self.failures = Counter(
            "derivatives_derivative_failures_total", "Derivatives that could not be made, by reason class",
            ["reason"], registry=r,
        )  # fmt: skip
        # --- bundles (core/bundles.py) ---
        self.bundle_lookups = Counter(
            "derivatives_bundle_cache_requests_total",
            "FindOrCreateBundle answers: hit (stored), miss (a build started), building, failed",
            ["kind", "result"],
            registry=r,
        )
        self.evictions = Counter(
            "derivatives_bundle_cache_evictions_total", "Bundles deleted by the reaper", ["kind", "reason"],
            registry=r,
        )  # fmt: skip
        self.evicted_bytes = Counter(
            "derivatives_bundle_cache_evicted_bytes_total", "Bytes of the bundles deleted by the reaper",
            ["kind", "reason"], registry=r,
        )  # fmt: skip
        # --- the process pool (worker/pool.py, worker/tasks.py) ---
        self.pool_processes = Gauge(
            "derivatives_pool_processes", "Pool processes busy with a task or idle", ["state"],
            multiprocess_mode="livesum", registry=r,
        )  # fmt: skip
        self.pool_crashes = Counter(
            "derivatives_pool_crashes_total", "Times a pool process died and the pool was replaced", registry=r
        )
        self.serving_restarts = Counter(
            "derivatives_serving_process_restarts_total",
            "Serving processes (DERIVATIVES_SERVER_PROCESSES > 1) that exited on their own and were started again",
            registry=r,
        )
        self.rss = Gauge(
            "derivatives_process_resident_memory_bytes",
            "Resident memory of each live process of the host (role: the host process or a pool process)",
            ["role"],
            multiprocess_mode="liveall",
            registry=r,
        )
        # --- Postgres pool (sampled; core/domain.py) ---
        self.db_connections = Gauge(
            "derivatives_db_pool_connections", "Postgres pool connections, in use or idle", ["state"],
            multiprocess_mode="livesum", registry=r,
        )  # fmt: skip
        self.db_max = Gauge(
            "derivatives_db_pool_max_connections", "Postgres pool size limit (summed over processes)",
            multiprocess_mode="livesum", registry=r,
        )  # fmt: skip
        self.db_waiting = Gauge(
            "derivatives_db_pool_requests_waiting", "Requests waiting for a Postgres pool connection",
            multiprocess_mode="livesum", registry=r,
        )  # fmt: skip
        # --- progress (core/progress.py) ---
        self.watchers = Gauge(
            "derivatives_progress_watchers", "Progress watchers connected (gRPC WatchProgress and HTTP events)",
            multiprocess_mode="livesum", registry=r,
        )  # fmt: skip
        self.events_sent = Counter(
            "derivatives_progress_events_sent_total",
            "Progress updates handed to watchers, by type (event, snapshot, heartbeat, final)",
            ["type"],
            registry=r,
        )


_lock = threading.Lock()
_metrics: Metrics | None = None
# Where the metrics of this process are registered: served only without multiprocess mode.
REGISTRY = CollectorRegistry(auto_describe=True)


def get() -> Metrics:
    """This process's metrics, made on first use (after `prepare_multiprocess`, if the process calls it)."""
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = Metrics(REGISTRY)
    return _metrics


def multiprocess_dir() -> str | None:
    path = os.environ.get(ENV)
    return path if path and os.path.isdir(path) else None


def enabled() -> bool:
    """Whether this host serves metrics (its top process called `prepare_multiprocess`)."""
    return multiprocess_dir() is not None


_prepared: Path | None = None


# A host's metrics directory: DIR_PREFIX + the top process's pid + a random part, in the temporary directory.
DIR_PREFIX = "derivatives-metrics-"


def prepare_multiprocess() -> Path:
    """Make this host's metrics directory and switch to multiprocess mode (see the module docstring).

    Call it in the top process of a host, once, before any pool process or serving child is started
    (they inherit the directory through the environment) and before any metric is touched here.
    """
    global _prepared
    if _prepared is not None:
        return _prepared
    if _metrics is not None:
        raise RuntimeError("prepare_multiprocess() after a metric was made: that metric would not be shared")
    _remove_orphans()
    path = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-"))
    os.environ[ENV] = str(path)
    values.ValueClass = values.MultiProcessValue()  # this process imported prometheus_client before
    atexit.register(_remove, path, os.getpid())
    _prepared = path
    log.debug("metrics directory %s", path)
    return path


def _remove_orphans() -> None:
    """Directories of hosts that ended without their atexit (SIGKILL, out of memory): the owner's pid is in the name."""
    for path in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        owner = path.name.removeprefix(DIR_PREFIX).partition("-")[0]
        if owner.isdigit() and not pids.alive(int(owner)):
            shutil.rmtree(path, ignore_errors=True)


def _remove(path: Path, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def process_exited(pid: int) -> None:
    """A process of this host has exited: its live gauges (streams open, RSS, ...) leave the sums."""
    path = multiprocess_dir()
    if path is not None:
        mark_process_dead(pid, path)


def sweep_dead_processes() -> None:
    """`process_exited` for every process whose live gauges are still there but which is gone (killed)."""
    path = multiprocess_dir()
    if path is None:
        return
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        pid = int(os.path.basename(name).rsplit("_", 1)[1].removesuffix(".db"))
        if not pids.alive(pid):
            mark_process_dead(pid, path)


# --- events: one call per site ------------------------------------------------------------------


def job_claimed(kind: JobKind, first_wait_seconds: float | None) -> None:
    """A job attempt was claimed; `first_wait_seconds`: creation to claim, for a first attempt."""
    m = get()
    m.jobs_claimed.labels(kind.value).inc()
    if first_wait_seconds is not None:
        m.queue_wait.labels(kind.value).observe(max(0.0, first_wait_seconds))


def job_ended(kind: JobKind, outcome: JobOutcome, seconds: float) -> None:
    m = get()
    m.jobs_ended.labels(kind.value, outcome.value).inc()
    m.job_seconds.labels(kind.value, outcome.value).observe(seconds)


def asset_rendered(seconds: float) -> None:
    """One asset's derivatives were rendered on the pool (its wait for a slot not counted)."""
    get().asset_seconds.observe(seconds)


def derivative_failures(classes: Iterable[FailureClass]) -> None:
    """Derivatives (or whole assets) that could not be made, by their class (set where each failure was made)."""
    m = get()
    for failure_class in classes:
        m.failures.labels(failure_class.value).inc()


def bundle_lookup(kind: BundleKind, result: BundleLookup) -> None:
    get().bundle_lookups.labels(kind.value, result.value).inc()


def bundles_evicted(reason: Eviction, evicted: Iterable[tuple[str, int]]) -> None:
    """The reaper deleted these bundles: (kind, size in bytes) each."""
    m = get()
    for kind, size in evicted:
        m.evictions.labels(kind, reason.value).inc()
        m.evicted_bytes.labels(kind, reason.value).inc(size)


def pool_busy(busy: int, size: int) -> None:
    m = get()
    busy = min(busy, size)
    m.pool_processes.labels("busy").set(busy)
    m.pool_processes.labels("idle").set(size - busy)


def serving_process_restarted() -> None:
    get().serving_restarts.inc()


def pool_crashed() -> None:
    get().pool_crashes.inc()


def watchers_changed(delta: int) -> None:
    get().watchers.inc(delta)


# Updates handed to watchers, by type, since the process started: counted with a plain increment (a hot path:
# each event goes to every watcher) and added to the counter by the sampler thread (`_flush_sent`).
_sent: dict[str, int] = {}
_sent_flushed: dict[str, int] = {}
_sent_sampling: Callable[[], None] | None = None


def progress_sent(kind: str) -> None:
    """One update handed to a watcher: "event", "snapshot", "heartbeat" or "final"."""
    global _sent_sampling
    _sent[kind] = _sent.get(kind, 0) + 1  # only this thread (the event loop's) writes it
    if _sent_sampling is None:
        _sent_sampling = sample(_flush_sent)


def _flush_sent() -> None:
    counter = get().events_sent
    for kind, total in list(_sent.items()):
        delta = total - _sent_flushed.get(kind, 0)
        if delta:
            counter.labels(kind).inc(delta)
            _sent_flushed[kind] = total


@contextlib.contextmanager
def stream_open(labels: tuple[str, str, str]) -> Iterator[None]:
    gauge = get().streams_open.labels(*labels)
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


# --- sampled values: one daemon thread per process ---------------------------------------------


class _Sampler:
    def __init__(self) -> None:
        self._fns: dict[int, Callable[[], None]] = {}
        self._next = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, fn: Callable[[], None]) -> Callable[[], None]:
        _run_quietly(fn)
        with self._lock:
            token = self._next
            self._next += 1
            self._fns[token] = fn
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="metrics-sampler", daemon=True)
                self._thread.start()

        def remove() -> None:
            with self._lock:
                self._fns.pop(token, None)

        return remove

    def _loop(self) -> None:
        while True:
            time.sleep(SAMPLE_SECONDS)
            with self._lock:
                fns = list(self._fns.values())
            for fn in fns:
                _run_quietly(fn)


def _run_quietly(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as exc:  # a sample missed is no reason to stop sampling
        log.debug("metrics sample failed: %s", exc)


_sampler = _Sampler()


def sample(fn: Callable[[], None]) -> Callable[[], None]:
    """Run `fn` now and every SAMPLE_SECONDS in this process's sampler thread; returns what stops it.

    Only when the host serves metrics (multiprocess mode): otherwise no thread, nothing sampled.
    """
    if not enabled():
        return _nothing
    return _sampler.add(fn)


def _nothing() -> None:
    pass


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """This process's resident set size, from /proc (psutil is a dev dependency only)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def sample_rss(role: str) -> Callable[[], None]:
    """Publish this process's RSS under `role` ("pool", or the host's name without its index)."""
    gauge = get().rss.labels(re.sub(r"-\d+$", "", role))
    return sample(lambda: gauge.set(resident_bytes()))


def sample_db_pool(pool: AsyncConnectionPool[Any]) -> Callable[[], None]:
    """Publish a Postgres pool's usage (psycopg_pool's get_stats) from the sampler thread."""
    m = get()

    def update() -> None:
        stats = pool.get_stats()
        size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
        m.db_connections.labels("in_use").set(max(0, size - idle))
        m.db_connections.labels("idle").set(idle)
        m.db_max.set(stats.get("pool_max", pool.max_size))
        m.db_waiting.set(stats.get("requests_waiting", 0))

    return sample(update)


# --- the endpoint ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActiveJobs:
    kind: str
    stage: str
    jobs: int
    oldest_ready_seconds: float


@dataclass(frozen=True)
class StoredBundles:
    kind: str
    bundles: int
    size_bytes: int


class DatabaseCollector:
    """The values that live in Postgres, as read by the last scrape (`refresh`)."""

    ACTIVE_STAGES = (Stage.QUEUED, Stage.RUNNING, Stage.FINISHING)

    def __init__(self) -> None:
        self.jobs: list[ActiveJobs] | None = None
        self.bundles: list[StoredBundles] | None = None

    async def refresh(self, db: Database) -> None:
        try:
            rows = await asyncio.wait_for(db.fetchall("metrics_jobs"), SCRAPE_QUERY_SECONDS)
            self.jobs = [
                ActiveJobs(r["kind"], r["stage"], int(r["jobs"]), float(r["oldest_ready_seconds"])) for r in rows
            ]
            rows = await asyncio.wait_for(db.fetchall("metrics_bundles"), SCRAPE_QUERY_SECONDS)
            self.bundles = [StoredBundles(r["kind"], int(r["bundles"]), int(r["size_bytes"])) for r in rows]
        except Exception as exc:  # Postgres away: those series are left out of this scrape
            log.warning("metrics: reading jobs and bundles failed: %s", exc)
            self.jobs = self.bundles = None

    def collect(self) -> Iterator[Metric]:
        if self.jobs is not None:
            jobs = GaugeMetricFamily(
                "derivatives_jobs", "Jobs not finished, by kind and stage", labels=["kind", "stage"]
            )
            oldest = GaugeMetricFamily(
                "derivatives_job_queue_oldest_seconds",
                "How long the oldest job ready to run has waited for a runner (0: none waiting)",
                labels=["kind"],
            )
            counts = {(j.kind, j.stage): j.jobs for j in self.jobs}
            ages = {j.kind: j.oldest_ready_seconds for j in self.jobs if j.stage == Stage.QUEUED}
            for kind in JobKind:
                for stage in self.ACTIVE_STAGES:
                    jobs.add_metric([kind.value, stage.value], counts.get((kind.value, stage.value), 0))
                oldest.add_metric([kind.value], ages.get(kind.value, 0.0))
            yield jobs
            yield oldest
        if self.bundles is not None:
            stored = GaugeMetricFamily(
                "derivatives_bundle_cache_stored_bytes", "Bytes of the built bundles stored", labels=["kind"]
            )
            count = GaugeMetricFamily("derivatives_bundle_cache_bundles", "Built bundles stored", labels=["kind"])
            by_kind = {b.kind: b for b in self.bundles}
            for bundle_kind in BundleKind:
                found = by_kind.get(bundle_kind.value)
                stored.add_metric([bundle_kind.value], found.size_bytes if found else 0)
                count.add_metric([bundle_kind.value], found.bundles if found else 0)
            yield stored
            yield count


class MetricsRole:
    """Serves GET /metrics on DERIVATIVES_METRICS_LISTEN: every process of the host, and the database's
    values read at the scrape. After the domain (it reads Postgres). A taken port stops start-up (exit 1)."""

    name = "metrics"
    READ_TIMEOUT = 10.0  # seconds a client has to send its request head

    def __init__(self) -> None:
        self.collector = DatabaseCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self._server: asyncio.Server | None = None
        self._db: Database | None = None
        self.listen = ""

    async def start(self, ctx: HostContext) -> None:
        self.listen = ctx.settings.metrics_listen
        self._db = ctx.domain.db
        path = multiprocess_dir()
        if path is not None:
            MultiProcessCollector(self.registry, path)
        else:  # this process only (prepare_multiprocess was not called)
            self.registry.register(_Forward(REGISTRY))
        self.registry.register(self.collector)
        host, port = split_listen(self.listen)
        try:  # host "" (`:port`): every interface
            self._server = await asyncio.start_server(self._handle, host or None, port)
        except OSError as exc:
            raise SystemExit(f"cannot listen on {self.listen} (metrics): {exc.strerror or exc}") from None
        log.info("serving metrics on http://%s/metrics%s", self.listen, "" if path else " (this process only)")

    async def drain(self, grace: float) -> None:
        pass  # scrapes go on while the rest drains

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def render(self) -> bytes:
        """The exposition text of one scrape."""
        sweep_dead_processes()
        if self._db is not None:
            await self.collector.refresh(self._db)
        return await asyncio.to_thread(generate_latest, self.registry)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.READ_TIMEOUT)
            method, target, _version = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET /metrics\n"
            elif path != "/metrics":
                status, ctype, body = "404 Not Found", "text/plain", b"metrics are at /metrics\n"
            else:
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, await self.render()
            headers = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            writer.write((headers + "Connection: close\r\n\r\n").encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError):
            pass  # a client that sent no complete request head, or left
        except Exception as exc:  # a scrape that failed (an unreadable value file): one line, the connection closed
            log.error("metrics: the scrape failed: %s: %s", type(exc).__name__, exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class _Forward:
    """A registry's metrics, collected into another registry."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return self.source.collect()
