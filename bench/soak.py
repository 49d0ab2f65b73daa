"""Soak (issue 10): many clients for fixed minutes, mixing the service's RPCs; what grows, what fails.

Against the real server (embedded Postgres, filesystem storage, DERIVATIVES_WORKERS=2), `--clients`
asyncio callers over 4 channels for `--minutes`, each in a loop picking one of:

  GetAsset 40% · FindOrCreateBundle 20% · ReadBundle 10% (of a bundle it saw built) · WatchProgress 10%
  (of the last job or bundle it started, until the end or 5 s) · PutAsset 10% · CreateDerivatives 10%

PutAsset replaces the original of one of 120 assets (so derivatives are replaced and deleted, and the
8 works' bundles, whose members they are, are rebuilt); the writes (PutAsset, CreateDerivatives) of all
clients together are held to `--writes-per-second` (a client that finds the budget spent picks another
call) so the pool keeps up and the queue stays bounded.
Every 15 s the parent samples the RSS and open files of the server and of each pool process; the
first sample is taken after the warm-up (every asset made, every bundle built once).

Reports errors by gRPC code per RPC (expected: DEADLINE_EXCEEDED on a watch cut at 5 s; anything
else is counted as unexpected), p50/p99 per RPC, and the samples. Writes bench/results/soak.json.

    .venv/bin/python -m bench.soak [--minutes 10] [--clients 64]     # ~12 minutes
    .venv/bin/python -m bench.soak --quick                            # 1 minute, 16 clients
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from bench.common import WORK, arguments, header, load_average, psutil, running_server, server_pids, write_results

ASSETS = 120
WORKS = 8
MEMBERS = 12
WATCH_SECONDS = 5.0
SAMPLE_SECONDS = 15.0
MIX = [
    ("GetAsset", 40),
    ("FindOrCreateBundle", 20),
    ("ReadBundle", 10),
    ("WatchProgress", 10),
    ("PutAsset", 10),
    ("CreateDerivatives", 10),
]
EXPECTED = {("WatchProgress", "DEADLINE_EXCEEDED")}
# The stated bounds: growth from the first sample (after the warm-up) to the last.
RSS_GROWTH_MIB = 64
FILES_GROWTH = 10


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    codes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    samples: list[dict[str, Any]] = field(default_factory=list)


def jpegs(count: int) -> list[bytes]:
    """Distinct scans about 1600 x 1200 (a different width each), made once."""
    from tests import images

    return [images.jpeg(1600 + 8 * i, 1200) for i in range(count)]


def sample(pids: list[int], started: float) -> dict[str, Any]:
    ps = psutil()
    processes = []
    for pid in pids:
        try:
            proc = ps.Process(pid)
            processes.append({"pid": pid, "rss": int(proc.memory_info().rss), "open_files": int(proc.num_fds())})
        except ps.Error:
            continue
    return {"at_seconds": round(time.monotonic() - started, 1), "processes": processes}


class Writes:
    """A token bucket shared by all clients: at most `rate` writes a second; a client that finds it
    empty picks another call instead of waiting."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        if now < self.next:
            return False
        self.next = max(self.next + self.interval, now - 1.0)  # at most a second's burst
        return True


async def soak(address: str, clients: int, seconds: float, rate: float, data: list[bytes], tally: Tally) -> None:
    import grpc

    from derivatives.v1 import derivatives_pb2 as pb
    from derivatives.v1 import derivatives_pb2_grpc as pb_grpc

    options = [("grpc.max_receive_message_length", 256 << 20)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(4)]
    stubs = [pb_grpc.DerivativeServiceStub(c) for c in channels]
    writes = Writes(rate)
    built: dict[tuple[str, int], str] = {}  # (work, kind) -> a bundle id seen SUCCESS
    end = time.monotonic() + seconds
    kinds = (pb.BUNDLE_KIND_PDF, pb.BUNDLE_KIND_ZIP)

    async def client(i: int) -> None:
        rnd = random.Random(i)
        stub = stubs[i % len(stubs)]
        started: list[tuple[str, str]] = []  # ("job_id" | "bundle_id", id)
        names, weights = zip(*MIX, strict=True)
        while time.monotonic() < end:
            op = rnd.choices(names, weights)[0]
            t0 = time.monotonic()
            try:
                if op == "GetAsset":
                    await stub.GetAsset(pb.GetAssetRequest(asset_id=f"soak-{rnd.randrange(ASSETS)}"))
                elif op == "FindOrCreateBundle":
                    key = (f"work-{rnd.randrange(WORKS)}", rnd.choice(kinds))
                    bundle = await stub.FindOrCreateBundle(pb.FindOrCreateBundleRequest(work_id=key[0], kind=key[1]))
                    if bundle.status == pb.BUNDLE_STATUS_SUCCESS:
                        built[key] = bundle.bundle_id
                    elif bundle.status == pb.BUNDLE_STATUS_IN_PROGRESS:
                        started.append(("bundle_id", bundle.bundle_id))
                elif op == "ReadBundle":
                    if not built:
                        continue
                    bundle_id = built[rnd.choice(sorted(built))]
                    async for _chunk in stub.ReadBundle(pb.ReadBundleRequest(bundle_id=bundle_id)):
                        pass
                elif op == "WatchProgress":
                    if not started:
                        continue
                    target, target_id = started.pop()
                    request = pb.WatchProgressRequest(**{target: target_id})
                    async for _event in stub.WatchProgress(request, timeout=WATCH_SECONDS):
                        pass
                elif op == "PutAsset":
                    if not writes.take():
                        continue
                    asset_id = f"soak-{rnd.randrange(ASSETS)}"
                    await stub.PutAsset(pb.PutAssetRequest(asset_id=asset_id, data=rnd.choice(data)))
                else:
                    if not writes.take():
                        continue
                    ids = [f"soak-{rnd.randrange(ASSETS)}" for _ in range(rnd.randint(1, 5))]
                    job = await stub.CreateDerivatives(pb.CreateDerivativesRequest(asset_ids=ids, lazy=True))
                    started.append(("job_id", job.job_id))
                tally.codes[op]["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                tally.codes[op][exc.code().name] += 1
            tally.latencies[op].append(time.monotonic() - t0)
            del started[:-20]  # remember the last few only

    try:
        await asyncio.gather(*(client(i) for i in range(clients)))
    finally:
        for channel in channels:
            await channel.close()


def setup(server: Any, data: list[bytes]) -> None:
    """Every asset with its derivatives, every work with both bundles built: the warm-up, untimed."""
    from bench.common import put_work
    from client.client import Client
    from derivatives.v1 import derivatives_pb2 as pb
    from tests.helpers import wait_bundle

    with Client(server.address) as client:
        for n in range(ASSETS):
            client.put_asset(f"soak-{n}", data[n % len(data)], skip_derivatives=True)
        job = client.create_derivatives([f"soak-{n}" for n in range(ASSETS)])
        for _event in client.watch(job_id=job.job_id):
            pass
        for w in range(WORKS):
            put_work(
                client, f"work-{w}", f"Soak work {w}", [f"soak-{(w * MEMBERS + m) % ASSETS}" for m in range(MEMBERS)]
            )
        for w in range(WORKS):
            for kind in (pb.BUNDLE_KIND_PDF, pb.BUNDLE_KIND_ZIP):
                wait_bundle(client.stub, f"work-{w}", kind)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def main() -> int:
    parser = arguments(__doc__, "1 minute, 16 clients")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--writes-per-second", type=float, default=4.0)
    args = parser.parse_args()
    minutes, clients = (1.0, 16) if args.quick else (args.minutes, args.clients)
    params = {"minutes": minutes, "clients": clients, "writes_per_second": args.writes_per_second, "mix": dict(MIX)}
    results = header("soak", params)
    load_before, wall = load_average(), time.monotonic()
    data = jpegs(20)
    tally = Tally()
    with running_server(WORK / "soak-service", "soak-server.log", DERIVATIVES_WORKERS="2") as server:
        print("warm-up: assets, derivatives, bundles ...", file=sys.stderr)
        setup(server, data)
        started = time.monotonic()
        stop = threading.Event()

        def sampler() -> None:
            while True:
                tally.samples.append(sample(server_pids(server), started))
                if stop.wait(SAMPLE_SECONDS):
                    return

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        print(f"soak: {clients} clients for {minutes:g} minutes ...", file=sys.stderr)
        asyncio.run(soak(server.address, clients, minutes * 60, args.writes_per_second, data, tally))
        stop.set()
        thread.join()
        tally.samples.append(sample(server_pids(server), started))
    results["load_average"] = {"before": load_before, "after": load_average()}
    results["seconds"] = time.monotonic() - wall
    results["rpcs"] = {
        op: {
            "calls": len(values),
            "p50_ms": round(1000 * statistics.median(values), 2),
            "p99_ms": round(1000 * percentile(values, 0.99), 2),
            "codes": dict(tally.codes[op]),
        }
        for op, values in sorted(tally.latencies.items())
    }
    results["samples"] = tally.samples
    results["bounds"] = {"rss_growth_mib": RSS_GROWTH_MIB, "open_files_growth": FILES_GROWTH}
    unexpected = {
        f"{op} {code}": n
        for op, codes in tally.codes.items()
        for code, n in codes.items()
        if code != "OK" and (op, code) not in EXPECTED
    }
    results["unexpected_errors"] = unexpected
    for op, row in results["rpcs"].items():
        print(
            f"{op:20} {row['calls']:7} calls  p50 {row['p50_ms']:8.1f} ms  p99 {row['p99_ms']:8.1f} ms  {row['codes']}"
        )
    first, last = tally.samples[0]["processes"], tally.samples[-1]["processes"]
    for a, b in zip(first, last, strict=False):
        rss, files = f"{a['rss'] >> 20} -> {b['rss'] >> 20} MiB", f"{a['open_files']} -> {b['open_files']}"
        print(f"pid {a['pid']}->{b['pid']}: RSS {rss}, open files {files}")
    return write_results("soak", args.out, args.quick, results, [])


if __name__ == "__main__":
    sys.exit(main())
