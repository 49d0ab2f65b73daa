"""Whole-work bundles (issue 4): the service's PDF and ZIP builds against `img2pdf` and `zip -0`, in one run.

For works of 100 and 1,000 members (each member its own asset), interleaved, in an order that
rotates every repetition:

- the service end to end: the real server (filesystem storage, embedded Postgres,
  DERIVATIVES_WORKERS=2), timed from FindOrCreateBundle until WatchProgress delivers the final
  STAGE_SUCCEEDED event; peak RSS of the server process tree (server + pool processes, summed),
  sampled every 50 ms. The server is warm: one small untimed build of each kind runs first.
- baselines on the same local files: `img2pdf --imgsize 150dpi` (the service's page size) and
  `zip -0 -q out.zip -@`; wall time, and peak RSS and CPU of the child from `/usr/bin/time`.
- diagnostics (not contenders), each in a spawned process of its own: the service's writer
  (worker/pdf_writer.py, worker/zip_writer.py) through core.storage.chunk_stream into
  FileStorage.put on the local files, as a build runs it but without gRPC, Postgres and the job;
  and the floor: writing as many bytes to a new file, nothing else.

Members are 1200x1600 JPEG pages (Q=88, about 0.5 MB): not wider than download_medium, so the
service's PDF embeds each uploaded JPEG as it is and its ZIP stores it as it is, the same bytes the
baselines get. The members are uploaded once (UploadOriginal, untimed), and each one's smallest
derivative is made (untimed), as the asset's own job would have: a JPEG original goes into a
bundle only once a derivative shows that it decodes (core/bundles.py). Each repetition re-titles
the works (PutWork, untimed) so FindOrCreateBundle builds anew. `sync` (untimed) runs before each
build. Every output is checked after its timing (the service's fetched with ReadBundle, untimed).

Writes bench/results/bundles.json (bench/render.py makes the tables of docs/benchmarks.md).
Exits non-zero only when some output was wrong, never for a slow number. Bounded: fixed sizes
and repetitions, a timeout on every build.

    .venv/bin/python -m bench.bundles [--reps 3]     # ~1.5 minutes on 2 cores
    .venv/bin/python -m bench.bundles --quick        # 10 and 40 members, 1 repetition
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import (
    BOOK_PAGES,
    WORK,
    RssSampler,
    arguments,
    header,
    load_average,
    put_work,
    rss_of,
    running_server,
    server_pids,
    spawn_pool,
    upload_files,
    write_results,
)

if TYPE_CHECKING:
    from client.client import Client
    from tests.harness import ServerProcess

MEMBERS = WORK / "members-1200-v1"  # one file per member, copies of the pages
SIZES, QUICK_SIZES = (100, 1000), (10, 40)
WARMUP_MEMBERS = 5
DEFAULT_REPS = 3
KINDS = ("pdf", "zip")
PDF_DPI = 150.0  # the service's default (DERIVATIVES_PDF_DPI)
PROOF_KEY = "thumb_mini"  # the smallest size the default definitions make of a page
PROCESSES = 2
CHUNK = 1 << 20
BUILD_TIMEOUT = 600.0  # seconds; only catches a hang
GNU_TIME = "/usr/bin/time" if Path("/usr/bin/time").exists() else None  # apt-get install -y time
TARGETS = {"time_vs_baseline_max": 1.2, "rss_largest_vs_smallest_max": 1.2}
BASELINE_OF = {"pdf": "img2pdf", "zip": "zip"}
LABELS = {
    "service": "Service end to end (FindOrCreateBundle → final WatchProgress event)",
    "img2pdf": "img2pdf CLI (`--imgsize 150dpi`)",
    "zip": "`zip -0 -q out.zip -@`",
    "writer": "diag: the service's writer + FileStorage.put alone, own process",
    "floor": "diag: writing as many bytes to a new file, nothing else",
}


def ensure_members(count: int) -> list[Path]:
    """Member files 0001.jpg ...: copies of the distinct pages in turn, made once."""
    pages = BOOK_PAGES.ensure()
    MEMBERS.mkdir(parents=True, exist_ok=True)
    members = [MEMBERS / f"{i + 1:04d}.jpg" for i in range(count)]
    for i, path in enumerate(members):
        if not path.exists():
            shutil.copyfile(pages[i % len(pages)], path)
    return members


def make_proofs(client: Client, asset_ids: list[str]) -> None:
    """Untimed: each member's smallest derivative, the one a build checks for before it uses the original."""
    from client.client import TERMINAL
    from derivatives.v1 import derivatives_pb2 as pb

    print(f"making the {PROOF_KEY} of {len(asset_ids)} members (untimed) ...", flush=True)
    job = client.create_derivatives(asset_ids, only=[PROOF_KEY])
    deadline = time.monotonic() + BUILD_TIMEOUT
    while job.stage not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.2)
        job = client.get_job(job.job_id)
    if job.stage != pb.STAGE_SUCCEEDED or job.failures:
        raise RuntimeError(f"making the {PROOF_KEY} derivatives ended {pb.Stage.Name(job.stage)}: {job.failures[:3]}")


def asset_id(index: int) -> str:
    return f"page-{index + 1:04d}"


def work_id(members: int) -> str:
    return f"bench-work-{members}"


# --- one build of each contender ------------------------------------------------------------


@dataclass
class Build:
    contender: str  # service | img2pdf | zip | writer | floor
    kind: str  # pdf | zip
    members: int
    rep: int
    seconds: float
    size_bytes: int
    peak_rss: int | None = None  # service: server tree, summed; baselines: the child
    peak_rss_main: int | None = None  # service: the server process alone
    rss_before: int | None = None  # service: server tree just before the build
    phases: dict[str, float] = field(default_factory=dict)  # service: seconds per stage, client clock
    cpu: tuple[float, float] | None = None  # baselines and diagnostics: (user, system) CPU seconds
    problems: list[str] = field(default_factory=list)


def check_output(kind: str, path: Path, files: list[Path], about: bool) -> list[str]:
    """PDF: page count and first page size; ZIP: entries in order, stored, with each member's size
    (the service adds about.txt last)."""
    import pypdf

    if not path.exists() or path.stat().st_size == 0:
        return [f"{path.name}: missing or empty"]
    if kind == "pdf":
        reader = pypdf.PdfReader(path)
        box, want = reader.pages[0].mediabox, (BOOK_PAGES.width * 72 / PDF_DPI, BOOK_PAGES.height * 72 / PDF_DPI)
        if len(reader.pages) != len(files) or abs(float(box.width) - want[0]) + abs(float(box.height) - want[1]) > 1:
            return [f"{path.name}: {len(reader.pages)} pages of {box.width}x{box.height} pt, expected {want}"]
        return []
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    if len(infos) != len(files) + about or (about and infos[-1].filename != "about.txt"):
        return [f"{path.name}: {len(infos)} entries, expected {len(files)} members{' and about.txt' * about}"]
    for info, src in zip(infos, files, strict=False):
        if info.file_size != src.stat().st_size or info.compress_type != zipfile.ZIP_STORED:
            return [f"{path.name}: {info.filename} is {info.file_size} bytes, expected {src.name} stored"]
    return []


@dataclass
class Service:
    server: ServerProcess
    client: Client
    out_dir: Path

    def build(self, kind: str, files: list[Path], rep: int) -> Build:
        from derivatives.v1 import derivatives_pb2 as pb

        enum = pb.BUNDLE_KIND_PDF if kind == "pdf" else pb.BUNDLE_KIND_ZIP
        request = pb.FindOrCreateBundleRequest(work_id=work_id(len(files)), kind=enum)
        before, _ = rss_of(server_pids(self.server))
        seen: dict[int, float] = {}
        with RssSampler(lambda: server_pids(self.server)) as sampler:
            start = time.perf_counter()
            bundle = self.client.stub.FindOrCreateBundle(request)
            watch = pb.WatchProgressRequest(bundle_id=bundle.bundle_id)
            for event in self.client.stub.WatchProgress(watch, timeout=BUILD_TIMEOUT):
                seen.setdefault(event.stage, time.perf_counter())
                if event.stage in (pb.STAGE_SUCCEEDED, pb.STAGE_FAILED):
                    break
            seconds = time.perf_counter() - start
        problems = []
        if bundle.status != pb.BUNDLE_STATUS_IN_PROGRESS:
            problems.append(f"FindOrCreateBundle returned a {pb.BundleStatus.Name(bundle.status)} bundle, not a build")
        if event.stage != pb.STAGE_SUCCEEDED or event.bundle.status != pb.BUNDLE_STATUS_SUCCESS:
            problems.append(f"build ended {pb.Stage.Name(event.stage)}: {event.bundle.error or event.error.message}")
        else:
            out = self.out_dir / f"service.{kind}"
            self.client.download_bundle(event.bundle, out)  # untimed: only to check it
            problems += check_output(kind, out, files, about=True)
            out.unlink(missing_ok=True)
        end = start + seconds
        running, finishing = seen.get(pb.STAGE_RUNNING, start), seen.get(pb.STAGE_FINISHING, end)
        phases = {"to_running": running - start, "members": finishing - running, "finishing": end - finishing}
        build = Build("service", kind, len(files), rep, seconds, event.bundle.size_bytes, phases=phases)
        build.peak_rss, build.peak_rss_main, build.rss_before = sampler.peak, sampler.peak_first, before
        build.problems = problems
        return build


def baseline_build(kind: str, files: list[Path], rep: int, out_dir: Path) -> Build:
    """The CLI under GNU time: its peak RSS (%M, its own ru_maxrss: not that of this large process it was
    forked from) and CPU (%U, %S)."""
    out = out_dir / f"baseline.{kind}"
    out.unlink(missing_ok=True)  # zip adds to an existing archive
    if kind == "pdf":
        img2pdf = str(Path(sys.executable).parent / "img2pdf")
        command = [img2pdf, "--imgsize", f"{PDF_DPI:g}dpi", "--from-file", "-", "-o", str(out)]
        stdin = b"\0".join(f.name.encode() for f in files)
    else:
        command = ["zip", "-0", "-q", str(out), "-@"]
        stdin = "".join(f"{f.name}\n" for f in files).encode()
    with tempfile.TemporaryDirectory(prefix="bench-child-", dir=WORK) as tmp:
        usage = Path(tmp) / "usage"
        wrapped = [GNU_TIME, "-f", "%M %U %S", "-o", str(usage), *command] if GNU_TIME else command
        start = time.perf_counter()
        proc = subprocess.run(wrapped, input=stdin, capture_output=True, cwd=files[0].parent, timeout=BUILD_TIMEOUT)
        seconds = time.perf_counter() - start
        fields = usage.read_text().split() if usage.exists() else []
    build = Build(BASELINE_OF[kind], kind, len(files), rep, seconds, out.stat().st_size if out.exists() else 0)
    if len(fields) >= 3 and fields[-3].isdigit():
        build.peak_rss, build.cpu = int(fields[-3]) * 1024, (float(fields[-2]), float(fields[-1]))
    failed = [f"{command[0]} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-300:]}"]
    build.problems = failed if proc.returncode else check_output(kind, out, files, about=False)
    out.unlink(missing_ok=True)
    return build


def writer_build(kind: str, files: list[Path], rep: int, out_dir: Path) -> Build:
    """Diagnostic: the service's writer streamed into FileStorage.put, as the build does, nothing around it."""
    from core.storage import FileStorage, chunk_stream, read_chunks
    from worker.pdf_writer import Page, PdfStream
    from worker.zip_writer import zip_stream

    def pages() -> Iterator[Page]:
        for i, path in enumerate(files):
            yield Page(path.read_bytes(), f"Page {i + 1} ({asset_id(i)})")

    def entries() -> Iterator[tuple[str, Iterator[bytes]]]:
        for i, path in enumerate(files):
            with open(path, "rb") as fh:
                yield f"{i + 1:04d}-bench_{asset_id(i)}.jpg", read_chunks(fh)

    storage = FileStorage(out_dir / "storage")
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    chunks = PdfStream({"Title": "bench"}, PDF_DPI).write(pages()) if kind == "pdf" else zip_stream(entries(), "a", "a")
    stream, counter = chunk_stream(chunks)
    storage.put("bundles", f"writer.{kind}", stream, length=-1)
    seconds = time.perf_counter() - start
    out = out_dir / "storage" / "bundles" / f"writer.{kind}"
    build = Build("writer", kind, len(files), rep, seconds, counter.total, cpu=cpu_since(before))
    build.problems = check_output(kind, out, files, about=True)
    out.unlink(missing_ok=True)
    return build


def floor_build(kind: str, files: list[Path], rep: int, out_dir: Path) -> Build:
    """Diagnostic: the members' size in zeros, 1 MiB at a time, to a new file (the page cache makes this
    vary several-fold between runs on this VM, and every contender writes about as much)."""
    size, block, out = sum(f.stat().st_size for f in files), bytes(CHUNK), out_dir / f"floor.{kind}"
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    with open(out, "wb") as fh:
        for offset in range(0, size, CHUNK):
            fh.write(block[: min(CHUNK, size - offset)])
    seconds = time.perf_counter() - start
    out.unlink()
    return Build("floor", kind, len(files), rep, seconds, size, cpu=cpu_since(before))


def cpu_since(before: resource.struct_rusage) -> tuple[float, float]:
    now = resource.getrusage(resource.RUSAGE_SELF)
    return now.ru_utime - before.ru_utime, now.ru_stime - before.ru_stime


def import_writers() -> None:
    import worker.pdf_writer
    import worker.zip_writer  # noqa: F401


def in_own_process(fn: Callable[..., Build], kind: str, files: list[Path], rep: int, out_dir: Path) -> Build:
    """A diagnostic in a fresh process (started and its imports done untimed): it shares nothing with this
    one (gRPC client threads, a large heap), where the ZIP writer ran 2-3x slower."""
    with spawn_pool(1) as pool:
        pool.submit(import_writers).result(timeout=60)
        return pool.submit(fn, kind, files, rep, out_dir).result(timeout=BUILD_TIMEOUT)


# --- the run --------------------------------------------------------------------------------


def measure(service: Service, files: list[Path], sizes: tuple[int, ...], reps: int) -> list[Build]:
    out_dir = service.out_dir
    contenders: list[Callable[[str, list[Path], int], Build]] = [
        service.build,
        lambda kind, some, rep: baseline_build(kind, some, rep, out_dir),
        lambda kind, some, rep: in_own_process(writer_build, kind, some, rep, out_dir),
        lambda kind, some, rep: in_own_process(floor_build, kind, some, rep, out_dir),
    ]
    builds: list[Build] = []
    for rep in range(1, reps + 1):
        for n in sizes:  # a new title is a new checksum: the next FindOrCreateBundle builds anew
            put_work(service.client, work_id(n), f"Bench work of {n} pages ({rep})", [asset_id(i) for i in range(n)])
        order = contenders[rep % len(contenders) :] + contenders[: rep % len(contenders)]
        for n in sizes:
            for kind in KINDS:
                for contender in order:  # side by side, in an order that rotates every repetition
                    os.sync()  # no build pays for the writeback of the previous one's output
                    b = contender(kind, files[:n], rep)
                    builds.append(b)
                    rss = f"  peak RSS {b.peak_rss / 2**20:.0f} MiB" if b.peak_rss else ""
                    print(f"  rep {rep}/{reps}  {kind} {n:>5}  {b.contender:<8} {b.seconds:7.3f} s{rss}", flush=True)
    return builds


def summary(builds: list[Build], kind: str, members: int, contender: str) -> dict[str, Any]:
    runs = [b for b in builds if (b.contender, b.kind, b.members) == (contender, kind, members)]
    seconds = [b.seconds for b in runs]
    cpus = [b.cpu for b in runs if b.cpu]
    row: dict[str, Any] = {
        "kind": kind,
        "members": members,
        "contender": contender,
        "label": LABELS[contender],
        "seconds": seconds,
        "best_s": min(seconds),
        "median_s": statistics.median(seconds),
        "size_bytes": runs[0].size_bytes,
        "peak_rss_bytes": max((b.peak_rss or 0 for b in runs), default=0) or None,
        "cpu_median_s": None,
    }
    if cpus:
        row["cpu_median_s"] = {k: statistics.median(c[i] for c in cpus) for i, k in enumerate(("user", "system"))}
    if contender == "service":
        row["each"] = [{k: getattr(b, k) for k in ("rss_before", "peak_rss", "peak_rss_main")} for b in runs]
        row["phases_median_s"] = {p: statistics.median(b.phases[p] for b in runs) for p in runs[0].phases}
    return row


def tool_versions() -> dict[str, str]:
    import img2pdf
    import pikepdf

    lines = subprocess.run(["zip", "-v"], capture_output=True, text=True).stdout.splitlines()
    version = next((line for line in lines if line.startswith("This is Zip")), "zip (version unknown)")
    return {
        "img2pdf": f"img2pdf {img2pdf.__version__} (pikepdf {pikepdf.__version__} engine)",
        "zip": version.removeprefix("This is ").split(",")[0].rstrip("."),
    }


def main() -> int:
    from client.client import Client

    parser = arguments(__doc__, f"{QUICK_SIZES[0]} and {QUICK_SIZES[1]} members, 1 repetition")
    parser.add_argument("--reps", type=int, help=f"repetitions (default {DEFAULT_REPS})")
    args = parser.parse_args()
    reps, sizes = args.reps or (1 if args.quick else DEFAULT_REPS), QUICK_SIZES if args.quick else SIZES
    started = time.monotonic()
    files = ensure_members(max(sizes))
    parameters = {"sizes": sizes, "reps": reps, "default_sizes": SIZES, "default_reps": DEFAULT_REPS}
    parameters |= {"kinds": KINDS, "pdf_dpi": PDF_DPI, "processes": PROCESSES, "warmup_members": WARMUP_MEMBERS}
    results = header("bundles", parameters) | {"targets": TARGETS, "tools": tool_versions()}
    results["pages"] = BOOK_PAGES.describe(files) | {"files": len(files)}
    out_dir = WORK / "bundles-out"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    server_dir = WORK / "bundles-service"
    try:
        with (
            running_server(server_dir, "bundles-server-last.log", DERIVATIVES_WORKERS=str(PROCESSES)) as server,
            Client(server.address) as client,
        ):
            make_proofs(
                client, upload_files(client, [(asset_id(i), f, "image/jpeg") for i, f in enumerate(files)], "pages")
            )
            service = Service(server, client, out_dir)
            warm_up = measure(service, files[:WARMUP_MEMBERS], (WARMUP_MEMBERS,), 1)  # imports, caches, connections
            print(f"measuring {len(sizes)} sizes x 2 kinds x {reps} repetitions ...", flush=True)
            load_before = load_average()
            builds = measure(service, files, sizes, reps)
            results["load_average"] = {"before": load_before, "after": load_average()}
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    contenders = {kind: ("service", BASELINE_OF[kind], "writer", "floor") for kind in KINDS}
    results["rows"] = [summary(builds, kind, n, c) for kind in KINDS for n in sizes for c in contenders[kind]]
    results["seconds"] = time.monotonic() - started
    from bench.render import bundles

    print(bundles(results))
    problems = [f"{b.contender} {b.kind} {b.members} rep {b.rep}: {p}" for b in warm_up + builds for p in b.problems]
    return write_results("bundles", args.out, args.quick, results, problems)


if __name__ == "__main__":
    sys.exit(main())
