"""Hot paths: cache-hit FindOrCreateBundle and GetAsset against the health Check RPC, in one run.

    .venv/bin/python -m bench.hot_paths [--seconds 10] [--clients 64] [--filler 200000] [--storage file,s3]

For each storage backend: a server (embedded Postgres, loopback only), `--filler` assets with 5
derivatives each loaded straight into Postgres (so the tables are not toy-sized), 32 real assets
with their 8 default derivatives, and two works of 20 and 1,000 members whose PDFs are built. Then
`--clients` concurrent callers (two client processes, 8 connections each) call each RPC for `--seconds` seconds:
grpc.health.v1 Check (the stack's own ceiling: no database), GetAsset, and FindOrCreateBundle on
each built PDF (a cache hit). Also measured once, outside the server: a hot query with and without
a prepared statement, and the protobuf conversion of an 8-derivative asset. Last, on file storage, the
same data served by 1 and 2 serving processes (`--serving`, DERIVATIVES_SERVER_PROCESSES).

Writes bench/results/hot_paths.json; `bench/render.py` turns it into the tables of
docs/benchmarks.md. Bounded: a fixed number of clients for a fixed time, 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import ROOT, WORK, machine_info, machine_line, now_text

RESULTS = ROOT / "bench" / "results" / "hot_paths.json"
CALLS = ("check", "get_asset", "hit_20", "hit_1000")
PROCESSES = 2  # client processes; each runs clients/PROCESSES concurrent callers
CHANNELS = 8  # connections per client process


# --- load -----------------------------------------------------------------------------------


def _caller(
    address: str, call: str, targets: list[str], concurrency: int, seconds: float, start_at: float
) -> list[float]:
    """One client process: `concurrency` callers in a loop until the time is up; returns latencies (s)."""
    return asyncio.run(_callers(address, call, targets, concurrency, seconds, start_at))


async def _callers(
    address: str, call: str, targets: list[str], concurrency: int, seconds: float, start_at: float
) -> list[float]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from derivatives.v1 import derivatives_pb2 as pb
    from derivatives.v1 import derivatives_pb2_grpc as pb_grpc

    # Each its own connection: a server with several serving processes balances connections, not calls.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(CHANNELS)]
    latencies: list[float] = []
    await asyncio.sleep(max(0.0, start_at - time.time()))  # both processes start together
    end = time.monotonic() + seconds

    async def loop(i: int) -> None:
        channel = channels[i % len(channels)]
        health = health_pb2_grpc.HealthStub(channel)
        stub = pb_grpc.DerivativeServiceStub(channel)
        rnd = random.Random(i)
        while (now := time.monotonic()) < end:
            if call == "check":
                await health.Check(health_pb2.HealthCheckRequest(service=""))
            elif call == "get_asset":
                await stub.GetAsset(pb.GetAssetRequest(asset_id=rnd.choice(targets)))
            else:
                reply = await stub.FindOrCreateBundle(
                    pb.FindOrCreateBundleRequest(work_id=targets[0], kind=pb.BUNDLE_KIND_PDF)
                )
                assert reply.status == pb.BUNDLE_STATUS_SUCCESS, reply
            latencies.append(time.monotonic() - now)

    await asyncio.gather(*(loop(i) for i in range(concurrency)))
    for channel in channels:
        await channel.close()
    return latencies


def cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def postgres_pids() -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]


def server_pids(server_pid: int) -> list[int]:
    """The server and its serving children (DERIVATIVES_SERVER_PROCESSES > 1), not its pool processes."""
    import psutil

    children = psutil.Process(server_pid).children()
    return [server_pid, *(p.pid for p in children if "server.child" in " ".join(p.cmdline()))]


def measure(
    address: str, call: str, targets: list[str], clients: int, seconds: float, server_pid: int
) -> dict[str, float]:
    """Calls/s and latency of `clients` concurrent callers, and the CPU each side spent per call."""
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 1.5  # after the processes have imported grpc
    with ctx.Pool(PROCESSES) as pool:
        # Postgres backends live as long as their pooled connection: the same pids throughout.
        pids: dict[str, list[int]] = {
            "server": server_pids(server_pid),
            "postgres": postgres_pids(),
            "clients": [p.pid for p in multiprocessing.active_children() if p.pid is not None],
        }
        before = {side: cpu_seconds(p) for side, p in pids.items()}
        parts = pool.starmap(_caller, [(address, call, targets, clients // PROCESSES, seconds, start_at)] * PROCESSES)
        spent = {side: cpu_seconds(p) - before[side] for side, p in pids.items()}
    latencies = sorted(x for part in parts for x in part)
    n = len(latencies)
    return {
        "calls": n,
        "calls_per_second": n / seconds,
        "p50_ms": 1000 * latencies[n // 2],
        "p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))],
        **{f"{side}_cpu_us_per_call": 1e6 * value / n for side, value in spent.items()},
    }


# --- the service and its data ---------------------------------------------------------------


@contextmanager
def service(storage: str, directory: Path, tree: Path | None = None) -> Iterator[Any]:
    """`python -m server` on `storage`, with its own embedded Postgres (and a SeaweedFS S3 server for S3).

    `tree`: run the server of another checkout (e.g. the commit before a change), for a before/after.
    """
    import shutil

    from tests.harness import Postgres, S3Endpoint, ServerProcess, server_env

    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    postgres = Postgres(directory / "pg")
    s3 = S3Endpoint(directory / "s3.log") if storage == "s3" else None
    server = None
    try:
        env = server_env(storage, postgres.new_database("hot"), directory / "data", s3)
        log = WORK / f"hot_paths-{storage}{'-baseline' if tree else ''}.log"
        server = ServerProcess(env, log, cwd=tree or ROOT).start()
        yield server
    finally:
        if server is not None:
            server.stop()
        if s3 is not None:
            s3.stop()
        postgres.stop()
        shutil.rmtree(directory, ignore_errors=True)


def load_filler(database_url: str, assets: int) -> None:
    """`assets` assets with 5 derivatives each, straight into the tables (not via the API)."""
    import psycopg

    print(f"loading {assets} filler assets and {5 * assets} derivatives ...", flush=True)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO assets (asset_id, content_type, size_bytes, sha512, width, height, bucket, object_key)"
            " SELECT 'fill-' || i, 'image/jpeg', 1000000, repeat(md5(i::text), 4), 3000, 2000,"
            " 'originals', 'fill-' || i || '/x' FROM generate_series(1, %s) AS i",
            (assets,),
        )
        conn.execute(
            "INSERT INTO derivatives (asset_id, key, content_type, size_bytes, width, height, sha512,"
            " original_sha512, bucket, object_key)"
            " SELECT 'fill-' || i, 'k' || k, 'image/jpeg', 10000, 100, 66, repeat(md5(k::text), 4),"
            " repeat(md5(i::text), 4), 'derivatives', 'fill-' || i || '/k' || k"
            " FROM generate_series(1, %s) AS i, generate_series(1, 5) AS k",
            (assets,),
        )
        conn.execute("ANALYZE")


def prepare_data(server: Any) -> dict[str, list[str]]:
    """32 assets with their default derivatives; built PDFs of a 20- and a 1,000-member work."""
    import grpc

    from derivatives.v1 import derivatives_pb2 as pb
    from tests import images

    targets: dict[str, list[str]] = {}
    with grpc.insecure_channel(server.address) as channel:
        stub = server.stub(channel)
        ids = [f"hot-{i}-{uuid.uuid4().hex[:6]}" for i in range(32)]
        print("making 32 assets with their derivatives ...", flush=True)
        for i, asset_id in enumerate(ids):
            stub.PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=images.jpeg(3000 + i, 2000)))
        deadline = time.monotonic() + 600
        for asset_id in ids:
            while not stub.GetAsset(pb.GetAssetRequest(asset_id=asset_id)).derivatives_created:
                assert time.monotonic() < deadline, "derivatives were not made"
                time.sleep(0.2)
        assert len(stub.GetAsset(pb.GetAssetRequest(asset_id=ids[0])).derivatives) == 8
        targets["get_asset"] = ids
        targets["check"] = []
        pages = [f"page-{i}-{uuid.uuid4().hex[:6]}" for i in range(20)]
        for i, asset_id in enumerate(pages):
            stub.PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=images.jpeg(1300 + i, 900), skip_derivatives=True))
        for members, name in ((20, "hit_20"), (1000, "hit_1000")):
            work_id = f"work-{members}-{uuid.uuid4().hex[:6]}"
            member_ids = [pages[i % len(pages)] for i in range(members)]
            stub.PutWork(
                pb.PutWorkRequest(work_id=work_id, title=f"A work of {members} pages", member_asset_ids=member_ids)
            )
            print(f"building the PDF of {members} members ...", flush=True)
            bundle = stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=work_id, kind=pb.BUNDLE_KIND_PDF))
            for _ in stub.WatchProgress(pb.WatchProgressRequest(bundle_id=bundle.bundle_id), timeout=600):
                pass
            bundle = stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=work_id, kind=pb.BUNDLE_KIND_PDF))
            assert bundle.status == pb.BUNDLE_STATUS_SUCCESS, bundle
            targets[name] = [work_id]
    return targets


# --- the stack's own costs, measured once ---------------------------------------------------


def query_costs(database_url: str, asset_id: str, work_id: str, rounds: int = 2000) -> dict[str, float]:
    """µs per hot query from one connection, with a prepared statement and without."""
    import psycopg

    from core.database import QUERIES

    out: dict[str, float] = {}
    for name, params in (
        ("get_asset_with_derivatives", {"asset_id": asset_id}),
        ("hot_bundle", {"work_id": work_id, "kind": "pdf"}),
    ):
        for label, threshold in (("prepared", 0), ("unprepared", None)):
            with psycopg.connect(database_url, autocommit=True, prepare_threshold=threshold) as conn:
                for _ in range(50):
                    conn.execute(QUERIES[name], params).fetchall()
                start = time.perf_counter()
                for _ in range(rounds):
                    conn.execute(QUERIES[name], params).fetchall()
                out[f"{name}_{label}_us"] = 1e6 * (time.perf_counter() - start) / rounds
    return out


def conversion_cost(server: Any, asset_id: str, rounds: int = 2000) -> dict[str, float]:
    """µs to turn an 8-derivative asset into its message (URL signing included: cached after the first)."""
    import datetime as dt

    import grpc

    from core.records import Asset, AssetView, Derivative, Location
    from core.storage import UrlSigner, open_storage
    from derivatives.v1 import derivatives_pb2 as pb
    from server import convert

    with grpc.insecure_channel(server.address) as channel:
        reply = server.stub(channel).GetAsset(pb.GetAssetRequest(asset_id=asset_id))
    now = dt.datetime.now(dt.UTC)
    asset = Asset(
        reply.asset_id,
        reply.content_type,
        reply.size_bytes,
        reply.sha512,
        reply.width,
        reply.height,
        reply.filename,
        Location(reply.original.bucket, reply.original.key),
        (),
        now,
        now,
    )
    derivatives = tuple(
        Derivative(
            d.asset_id,
            d.key,
            d.content_type,
            d.size_bytes,
            d.width,
            d.height,
            d.sha512,
            d.original_sha512,
            Location(d.location.bucket, d.location.key),
            dict(d.metadata),
            now,
        )
        for d in reply.derivatives
    )
    view = AssetView(asset, derivatives, True)
    urls = UrlSigner(open_storage(server.settings), dt.timedelta(seconds=server.settings.url_expiry_seconds))
    out = {}
    for label, size in (("cached", 100), ("uncached", 0)):  # size 0: every derivative message made anew
        messages = convert.DerivativeMessages(urls, size=size)
        start = time.perf_counter()
        for _ in range(rounds):
            convert.asset(view, messages).SerializeToString()
        out[f"asset_to_message_{label}_us"] = 1e6 * (time.perf_counter() - start) / rounds
    return out


# --- main -----------------------------------------------------------------------------------


def measure_and_print(
    server: Any, label: str, call: str, targets: list[str], args: argparse.Namespace
) -> dict[str, float]:
    print(f"{label}: {call}, {args.clients} clients for {args.seconds:.0f} s ...", flush=True)
    c = measure(server.address, call, targets, args.clients, args.seconds, server.proc.pid)
    print(
        f"  {c['calls_per_second']:.0f} calls/s, p99 {c['p99_ms']:.1f} ms; CPU µs per call: server"
        f" {c['server_cpu_us_per_call']:.0f}, postgres {c['postgres_cpu_us_per_call']:.0f},"
        f" clients {c['clients_cpu_us_per_call']:.0f}",
        flush=True,
    )
    return c


def run(storage: str, args: argparse.Namespace) -> dict[str, Any]:
    with service(storage, WORK / f"hot-{storage}") as server:
        load_filler(server.env["DATABASE_URL"], args.filler)
        targets = prepare_data(server)
        calls = {call: measure_and_print(server, storage, call, targets[call], args) for call in CALLS}
        costs = query_costs(server.env["DATABASE_URL"], targets["get_asset"][0], targets["hit_20"][0])
        costs |= conversion_cost(server, targets["get_asset"][0])
        pools: dict[str, dict[str, dict[str, float]]] = {}
        for size in [int(n) for n in args.pool_sizes.split(",") if n] if storage == "file" else []:
            server.stop()  # the same data, another Postgres pool size
            server.env["DERIVATIVES_DB_POOL_SIZE"] = str(size)
            server.start()
            pools[str(size)] = {
                call: measure_and_print(server, f"pool {size}", call, targets[call], args)
                for call in ("check", "get_asset", "hit_20")
            }
        serving: dict[str, dict[str, dict[str, float]]] = {}
        for count in [int(n) for n in args.serving.split(",") if n] if storage == "file" else []:
            server.stop()  # the same data, N serving processes (the default pool size)
            server.env.pop("DERIVATIVES_DB_POOL_SIZE", None)
            server.env["DERIVATIVES_SERVER_PROCESSES"] = str(count)
            server.start()
            if count > 1:  # all of them serve (start() waited for one to answer health)
                server.wait_log(f"{count} serving processes on")
            serving[str(count)] = {
                call: measure_and_print(server, f"{count} serving", call, targets[call], args)
                for call in ("check", "get_asset", "hit_20")
            }
        server.env.pop("DERIVATIVES_SERVER_PROCESSES", None)
    return {"calls": calls, "costs": costs, "pool_sizes": pools, "serving_processes": serving}


def baseline(args: argparse.Namespace) -> dict[str, Any]:
    """The same calls against the server of another checkout, on filesystem storage."""
    import subprocess

    tree = args.baseline_tree.resolve()
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True).stdout
    with service("file", WORK / "hot-baseline", tree) as server:
        load_filler(server.env["DATABASE_URL"], args.filler)
        targets = prepare_data(server)
        calls = {
            call: measure_and_print(server, f"baseline {rev.strip()}", call, targets[call], args) for call in CALLS
        }
    return {"revision": rev.strip(), "calls": calls}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--filler", type=int, default=200_000, help="filler assets (5 derivatives each)")
    parser.add_argument("--storage", default="file,s3")
    parser.add_argument("--pool-sizes", default="4,20", help="Postgres pool sizes to compare (file storage)")
    parser.add_argument(
        "--serving", default="1,2", help="DERIVATIVES_SERVER_PROCESSES values to compare (file storage)"
    )
    parser.add_argument("--baseline-tree", type=Path, help="also measure the server of this checkout (file storage)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    results: dict[str, Any] = {
        "benchmark": "hot_paths",
        "when": now_text(),
        "machine": machine_line(machine),
        "clients": args.clients,
        "seconds": args.seconds,
        "filler_assets": args.filler,
        "storage": {},
    }
    for storage in args.storage.split(","):
        results["storage"][storage] = run(storage, args)
    if args.baseline_tree:
        results["baseline"] = baseline(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}; render with .venv/bin/python -m bench.render")
    return 0


if __name__ == "__main__":
    sys.exit(main())
