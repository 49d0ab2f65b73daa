"""Whole-work bundles (issue 4): the service's PDF and ZIP builds against `img2pdf` and `zip -0`.

Everything below runs in ONE run on this machine, interleaved, for works of 100 and 1,000 members
(each member its own asset); the comparison is in ratios:

- the service end to end: the real server as a subprocess (tests/harness.py), filesystem storage,
  embedded Postgres, DERIVATIVES_WORKERS=2; timed from FindOrCreateBundle until WatchProgress
  delivers the final STAGE_SUCCEEDED event. Peak RSS of the server process tree (server + its pool
  processes, summed), sampled every 50 ms during each build. The server is warm: one small untimed
  build of each kind runs first.
- baselines on the same local JPEG files: the `img2pdf` CLI (`--imgsize 150dpi`: the service's
  page size) and `zip -0 -q out.zip -@`; wall time and peak RSS of the child (the kernel's
  ru_maxrss, via `/usr/bin/time -f %M`).
- diagnostics (not contenders), in a spawned process of their own: the service's writers
  (worker/pdf_writer.py, worker/zip_writer.py) streamed through core.storage.chunk_stream into
  FileStorage.put, on the local files (the build without gRPC, Postgres, the event loop and the job
  machinery); and the floor: writing as many bytes to a new file, nothing else (on this VM writing
  ~0.5 GB into the page cache varies several-fold from run to run, and every contender does it).

Members are 1200x1600 JPEG pages (Q=88, about 0.5 MB): not wider than download_medium, so both the
service's PDF and its ZIP embed the uploaded files as they are, the same bytes the baselines get.
50 distinct pages are generated once into bench/.work/ (gitignored) and copied to one file per
member. Each repetition re-titles the works (PutWork, untimed) so FindOrCreateBundle builds anew.
Every output is checked after its timing (the service's fetched with ReadBundle, untimed): PDF page
count and page size with pypdf, ZIP entry names and sizes. It reports and never fails on a slow
number: it exits non-zero only when a contender produced wrong output.

Targets: service time <= 1.2x the baseline's; the service's peak RSS at 1,000 members <= 1.2x at 100.

Run:

    cd /work/main && .venv/bin/python -m bench.bundles      # 100 and 1,000 members x 3 reps, ~2 minutes
    .venv/bin/python -m bench.bundles --quick               # 10 and 40 members, 1 repetition, docs untouched
    .venv/bin/python -m bench.bundles --reps 2 --docs /tmp/bench.md
"""

from __future__ import annotations

import argparse
import functools
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
from typing import TYPE_CHECKING

from bench.common import (
    BOOK_PAGES,
    WORK,
    RssSampler,
    add_docs_args,
    conclude,
    default_docs,
    load_average,
    machine_info,
    machine_line,
    markdown_table,
    mib,
    now_text,
    put_work,
    rss_of,
    running_server,
    server_pids,
    spawn_pool,
    text_table,
    upload_files,
    verdict,
)

if TYPE_CHECKING:
    from client.client import Client
    from derivatives.v1 import derivatives_pb2 as pb
    from tests.harness import ServerProcess

PAGES = BOOK_PAGES
MEMBERS = WORK / "members-1200-v1"  # one file per member, copies of the pages
SIZES = (100, 1000)
QUICK_SIZES = (10, 40)
WARMUP_MEMBERS = 5
DEFAULT_REPS = 3
KINDS = ("pdf", "zip")
PDF_DPI = 150.0  # the service's default (DERIVATIVES_PDF_DPI)
PROCESSES = 2
TARGET_TIME_RATIO = 1.2
TARGET_RSS_RATIO = 1.2
CHUNK = 1 << 20
BUILD_TIMEOUT = 600.0  # seconds; only catches a hang
GNU_TIME = "/usr/bin/time" if Path("/usr/bin/time").exists() else None  # apt-get install -y time
SECTION = "## Whole-work bundles (issue 4)"
BASELINE_OF = {"pdf": "img2pdf", "zip": "zip"}
LABELS = {
    "service": "Service end to end (FindOrCreateBundle → final WatchProgress event)",
    "img2pdf": "img2pdf CLI (`--imgsize 150dpi`)",
    "zip": "`zip -0 -q out.zip -@`",
    "writer": "diag: the service's writer + FileStorage.put alone, own process",
    "floor": "diag: writing as many bytes to a new file, nothing else (the floor)",
}


# --- inputs ---------------------------------------------------------------------------------


def ensure_members(count: int) -> list[Path]:
    """Member files 0001.jpg ...: copies of the distinct pages in turn, made once."""
    pages = PAGES.ensure()
    MEMBERS.mkdir(parents=True, exist_ok=True)
    members = [MEMBERS / f"{i + 1:04d}.jpg" for i in range(count)]
    for i, path in enumerate(members):
        if not path.exists():
            shutil.copyfile(pages[i % len(pages)], path)
    return members


def describe_pages(members: list[Path]) -> str:
    sizes = [p.stat().st_size for p in members]
    distinct = min(len(members), PAGES.count)
    return (
        f"{len(members)} member files, {distinct} distinct {PAGES.width}x{PAGES.height} baseline JPEG pages "
        f"(Q={PAGES.quality}, 4:2:0, sRGB, no metadata; {min(sizes) / 1e3:.0f}-{max(sizes) / 1e3:.0f} KB, "
        f"mean {statistics.mean(sizes) / 1e3:.0f} KB) copied in turn"
    )


def asset_id(index: int) -> str:
    return f"page-{index + 1:04d}"


def work_id(members: int) -> str:
    return f"bench-work-{members}"


# --- measurements ---------------------------------------------------------------------------


@dataclass
class Measurement:
    contender: str  # service | img2pdf | zip | writer | floor
    kind: str  # pdf | zip
    members: int
    rep: int
    seconds: float
    size_bytes: int
    peak_rss: int | None = None  # service: server tree, summed; baselines: the child
    peak_rss_main: int | None = None  # service: the server process alone
    rss_before: int | None = None  # service: server tree just before the build
    phases: dict[str, float] = field(default_factory=dict)
    cpu: tuple[float, float] | None = None  # baselines and diagnostics: (user, system) CPU seconds
    problems: list[str] = field(default_factory=list)


def check_pdf(path: Path, members: int) -> list[str]:
    import pypdf

    reader = pypdf.PdfReader(path)
    problems = []
    if len(reader.pages) != members:
        problems.append(f"{path.name}: {len(reader.pages)} pages, expected {members}")
    box = reader.pages[0].mediabox
    want = (PAGES.width * 72 / PDF_DPI, PAGES.height * 72 / PDF_DPI)
    if abs(float(box.width) - want[0]) > 0.5 or abs(float(box.height) - want[1]) > 0.5:
        problems.append(f"{path.name}: first page {float(box.width):.1f}x{float(box.height):.1f} pt, expected {want}")
    return problems


def check_zip(path: Path, files: list[Path], about: bool) -> list[str]:
    """Entries in order with each member's size; the service adds about.txt last."""
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    want = len(files) + (1 if about else 0)
    if len(infos) != want:
        return [f"{path.name}: {len(infos)} entries, expected {want}"]
    problems = []
    if about and infos[-1].filename != "about.txt":
        problems.append(f"{path.name}: last entry {infos[-1].filename!r}, expected about.txt")
    for info, src in zip(infos, files, strict=False):
        if info.file_size != src.stat().st_size or info.compress_type != zipfile.ZIP_STORED:
            problems.append(f"{path.name}: {info.filename} is {info.file_size} bytes, expected {src.name} stored")
            break
    return problems


def check_output(kind: str, path: Path, files: list[Path], about: bool) -> list[str]:
    if not path.exists() or path.stat().st_size == 0:
        return [f"{path.name}: missing or empty"]
    return check_pdf(path, len(files)) if kind == "pdf" else check_zip(path, files, about)


@dataclass
class ServiceCtx:
    server: ServerProcess
    client: Client
    out_dir: Path


def watch_build(ctx: ServiceCtx, bundle_id: str, start: float) -> tuple[pb.ProgressEvent, dict[str, float]]:
    """Follow a build to its final event; phases from when each stage was first seen (client clock)."""
    from derivatives.v1 import derivatives_pb2 as pb

    seen: dict[int, float] = {}
    final = None
    request = pb.WatchProgressRequest(bundle_id=bundle_id)
    for event in ctx.client.stub.WatchProgress(request, timeout=BUILD_TIMEOUT):
        seen.setdefault(event.stage, time.perf_counter())
        if event.stage in (pb.STAGE_SUCCEEDED, pb.STAGE_FAILED):
            final = event
            break
    if final is None:
        raise RuntimeError(f"bundle {bundle_id}: the progress stream ended without a final event")
    end = seen[final.stage]
    running = seen.get(pb.STAGE_RUNNING, start)
    finishing = seen.get(pb.STAGE_FINISHING, end)
    phases = {"to running": running - start, "members": finishing - running, "finishing": end - finishing}
    return final, phases


def service_build(ctx: ServiceCtx, kind: str, files: list[Path], rep: int) -> Measurement:
    from derivatives.v1 import derivatives_pb2 as pb

    enum = pb.BUNDLE_KIND_PDF if kind == "pdf" else pb.BUNDLE_KIND_ZIP
    request = pb.FindOrCreateBundleRequest(work_id=work_id(len(files)), kind=enum)

    def pids() -> list[int]:
        return server_pids(ctx.server)

    before, _ = rss_of(pids())
    with RssSampler(pids) as sampler:
        start = time.perf_counter()
        bundle = ctx.client.stub.FindOrCreateBundle(request)
        final, phases = watch_build(ctx, bundle.bundle_id, start)
        seconds = time.perf_counter() - start
    problems = []
    if bundle.status != pb.BUNDLE_STATUS_IN_PROGRESS:
        problems.append(f"FindOrCreateBundle returned a {pb.BundleStatus.Name(bundle.status)} bundle, not a build")
    if final.stage != pb.STAGE_SUCCEEDED or final.bundle.status != pb.BUNDLE_STATUS_SUCCESS:
        problems.append(f"build ended {pb.Stage.Name(final.stage)}: {final.bundle.error or final.error.message}")
    out = ctx.out_dir / f"service.{kind}"
    if not problems:
        ctx.client.download_bundle(final.bundle, out)  # untimed: only to check it
        problems += check_output(kind, out, files, about=True)
        out.unlink(missing_ok=True)
    return Measurement(
        "service",
        kind,
        len(files),
        rep,
        seconds,
        final.bundle.size_bytes,
        peak_rss=sampler.peak,
        peak_rss_main=sampler.peak_first,
        rss_before=before,
        phases=phases,
        problems=problems,
    )


@dataclass
class ChildRun:
    seconds: float
    code: int
    stderr: str
    peak_rss: int | None = None  # bytes
    cpu: tuple[float, float] | None = None  # (user, system) seconds


def run_child(command: list[str], stdin: bytes, cwd: Path) -> ChildRun:
    """Wall time of one CLI run, and from GNU time its peak RSS (%M, its ru_maxrss) and CPU (%U, %S).

    Not wait4 on our own child: a forked child's ru_maxrss starts at the size of the process it was
    forked from, and this one is large.
    """
    with tempfile.TemporaryDirectory(prefix="bench-child-", dir=WORK) as tmp:
        usage, err_file = Path(tmp) / "usage", Path(tmp) / "stderr"
        wrapped = [GNU_TIME, "-f", "%M %U %S", "-o", str(usage), *command] if GNU_TIME else command
        with open(err_file, "wb") as err:
            start = time.perf_counter()
            proc = subprocess.run(
                wrapped, input=stdin, stdout=subprocess.DEVNULL, stderr=err, cwd=cwd, timeout=BUILD_TIMEOUT
            )
            seconds = time.perf_counter() - start
        run = ChildRun(seconds, proc.returncode, err_file.read_text(errors="replace")[-500:])
        fields = usage.read_text().split() if usage.exists() else []
        if len(fields) >= 3 and fields[-3].isdigit():
            run.peak_rss = int(fields[-3]) * 1024
            run.cpu = (float(fields[-2]), float(fields[-1]))
        return run


def baseline_build(kind: str, files: list[Path], rep: int, out_dir: Path) -> Measurement:
    out = out_dir / f"baseline.{kind}"
    out.unlink(missing_ok=True)  # zip adds to an existing archive
    names = [f.name for f in files]
    if kind == "pdf":
        img2pdf = Path(sys.executable).parent / "img2pdf"
        command = [str(img2pdf), "--imgsize", f"{PDF_DPI:g}dpi", "--from-file", "-", "-o", str(out)]
        stdin = b"\0".join(n.encode() for n in names)
    else:
        command = ["zip", "-0", "-q", str(out), "-@"]
        stdin = "\n".join(names).encode() + b"\n"
    run = run_child(command, stdin, files[0].parent)
    problems = [f"{command[0]} exited {run.code}: {run.stderr.strip()}"] if run.code else []
    problems = problems or check_output(kind, out, files, False)
    size = out.stat().st_size if out.exists() else 0
    out.unlink(missing_ok=True)
    contender = BASELINE_OF[kind]
    return Measurement(
        contender, kind, len(files), rep, run.seconds, size, peak_rss=run.peak_rss, cpu=run.cpu, problems=problems
    )


def service_writer(kind: str, files: list[Path]) -> Iterator[bytes]:
    """The chunks the service's writer makes of these files (its PDF info and ZIP naming, roughly)."""
    from core.storage import read_chunks
    from worker.pdf_writer import Page, PdfStream
    from worker.zip_writer import zip_stream

    if kind == "pdf":

        def pages() -> Iterator[Page]:
            for i, path in enumerate(files):
                yield Page(path.read_bytes(), f"Page {i + 1} ({asset_id(i)})")

        return PdfStream({"Title": "bench"}, PDF_DPI).write(pages())

    def entries() -> Iterator[tuple[str, Iterator[bytes]]]:
        for i, path in enumerate(files):
            with open(path, "rb") as fh:
                yield f"{i + 1:04d}-bench_{asset_id(i)}.jpg", read_chunks(fh)

    return zip_stream(entries(), "about\n", "about\n")


def writer_build(kind: str, files: list[Path], rep: int, out_dir: Path) -> Measurement:
    """Diagnostic: the writer streamed into FileStorage.put as the build does, without the service around it."""
    from core.storage import FileStorage, chunk_stream

    storage = FileStorage(out_dir / "storage")
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    stream, counter = chunk_stream(service_writer(kind, files))
    storage.put("bundles", f"writer.{kind}", stream, length=-1)
    seconds = time.perf_counter() - start
    cpu = cpu_since(before)
    out = out_dir / "storage" / "bundles" / f"writer.{kind}"
    problems = check_output(kind, out, files, about=True)
    out.unlink(missing_ok=True)
    return Measurement("writer", kind, len(files), rep, seconds, counter.total, cpu=cpu, problems=problems)


def cpu_since(before: resource.struct_rusage) -> tuple[float, float]:
    """(user, system) CPU seconds of this process since `before`."""
    now = resource.getrusage(resource.RUSAGE_SELF)
    return now.ru_utime - before.ru_utime, now.ru_stime - before.ru_stime


def write_floor(kind: str, files: list[Path], rep: int, out_dir: Path) -> Measurement:
    """Diagnostic: just write the members' bytes (zeros, 1 MiB at a time) to a new file. On this VM the
    page cache makes this vary several-fold between runs, and every contender writes about as much."""
    size = sum(f.stat().st_size for f in files)
    block = bytes(CHUNK)
    out = out_dir / f"floor.{kind}"
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    with open(out, "wb") as fh:
        for offset in range(0, size, CHUNK):
            fh.write(block[: min(CHUNK, size - offset)])
    seconds = time.perf_counter() - start
    cpu = cpu_since(before)
    out.unlink()
    return Measurement("floor", kind, len(files), rep, seconds, size, cpu=cpu)


def in_diag_pool(
    ctx: ServiceCtx, fn: Callable[..., Measurement], kind: str, files: list[Path], rep: int
) -> Measurement:
    """A diagnostic in a fresh process of its own (started and warmed untimed): it shares nothing with this
    one (gRPC client threads, a large heap), where the ZIP writer ran 2-3x slower."""
    with spawn_pool(1) as pool:
        pool.submit(import_writers).result(timeout=60)
        return pool.submit(fn, kind, files, rep, ctx.out_dir).result(timeout=BUILD_TIMEOUT)


def import_writers() -> None:
    """Untimed: the imports a diagnostic needs."""
    import worker.pdf_writer
    import worker.zip_writer  # noqa: F401


# --- the run --------------------------------------------------------------------------------


def put_works(client: Client, sizes: tuple[int, ...], label: str) -> None:
    """(Re)title every work: a new title is a new checksum, so the next FindOrCreateBundle builds anew."""
    for n in sizes:
        put_work(client, work_id(n), f"Bench work of {n} pages ({label})", [asset_id(i) for i in range(n)])


def measure(ctx: ServiceCtx, files: list[Path], sizes: tuple[int, ...], reps: int) -> list[Measurement]:
    """Per repetition, for each size and kind: the service, the baseline and the two diagnostics, in an order
    that rotates with the repetition. Dirty pages are flushed (untimed) before each, so no contender pays
    for the writeback of the previous one's output (each writes up to ~0.5 GB)."""
    contenders: list[Callable[[str, list[Path], int], Measurement]] = [
        functools.partial(service_build, ctx),
        functools.partial(baseline_build, out_dir=ctx.out_dir),
        functools.partial(in_diag_pool, ctx, writer_build),
        functools.partial(in_diag_pool, ctx, write_floor),
    ]
    out: list[Measurement] = []
    for rep in range(1, reps + 1):
        put_works(ctx.client, sizes, f"repetition {rep}")
        order = contenders[rep % len(contenders) :] + contenders[: rep % len(contenders)]
        for n in sizes:
            for kind in KINDS:
                for contender in order:
                    os.sync()
                    m = contender(kind, files[:n], rep)
                    out.append(m)
                    rss = f"  peak RSS {mib(m.peak_rss)}" if m.peak_rss else ""
                    cpu = f"  cpu {m.cpu[0]:.2f}+{m.cpu[1]:.2f}" if m.cpu else ""
                    print(
                        f"  rep {rep}/{reps}  {kind} {n:>5}  {m.contender:<8} {m.seconds:7.3f} s{rss}{cpu}", flush=True
                    )
    return out


def warm_up(ctx: ServiceCtx, files: list[Path]) -> None:
    """One small untimed run of each contender and kind: imports, caches, first connections."""
    put_works(ctx.client, (WARMUP_MEMBERS,), "warm-up")
    some = files[:WARMUP_MEMBERS]
    for kind in KINDS:
        for m in (
            service_build(ctx, kind, some, 0),
            baseline_build(kind, some, 0, ctx.out_dir),
            in_diag_pool(ctx, writer_build, kind, some, 0),
        ):
            if m.problems:
                raise RuntimeError(f"warm-up {m.contender} {kind}: {m.problems}")


@dataclass
class Report:
    when: str
    machine: dict[str, str]
    pages: str
    sizes: tuple[int, ...]
    reps: int
    measured: list[Measurement]
    load: tuple[float, float]
    tools: dict[str, str]

    def runs(self, contender: str, kind: str, members: int) -> list[Measurement]:
        return [m for m in self.measured if (m.contender, m.kind, m.members) == (contender, kind, members)]

    def best(self, contender: str, kind: str, members: int) -> float:
        return min(m.seconds for m in self.runs(contender, kind, members))

    def median(self, contender: str, kind: str, members: int) -> float:
        return statistics.median(m.seconds for m in self.runs(contender, kind, members))

    def peak(self, contender: str, kind: str, members: int, main: bool = False) -> int:
        runs = self.runs(contender, kind, members)
        return max((m.peak_rss_main if main else m.peak_rss) or 0 for m in runs)

    def time_ratio(self, kind: str, members: int) -> float:
        return self.best("service", kind, members) / self.best(BASELINE_OF[kind], kind, members)

    def rss_ratio(self, kind: str, main: bool = False) -> float:
        small, large = min(self.sizes), max(self.sizes)
        return self.peak("service", kind, large, main) / self.peak("service", kind, small, main)


def tool_versions() -> dict[str, str]:
    import img2pdf
    import pikepdf

    zip_line = subprocess.run(["zip", "-v"], capture_output=True, text=True).stdout.splitlines()
    version = next((line for line in zip_line if line.startswith("This is Zip")), "zip (version unknown)")
    return {
        "img2pdf": f"img2pdf {img2pdf.__version__} (pikepdf {pikepdf.__version__} engine, its default when installed)",
        "zip": version.removeprefix("This is ").split(",")[0].rstrip("."),
    }


# --- reporting ------------------------------------------------------------------------------


TIME_HEADER = ["bundle", "members", "contender", "best (s)", "median (s)", "MB/s (best)", "peak RSS", "vs baseline"]
RSS_HEADER = ["bundle", "members", "server tree before", "server tree peak", "server process peak", "builds"]
PHASE_HEADER = ["bundle", "members", "until RUNNING seen (s)", "members written (s)", "FINISHING → final (s)"]


def fmt_rss(value: int | None) -> str:
    return mib(value) if value else "—"


def time_rows(report: Report) -> list[list[str]]:
    rows = []
    for kind in KINDS:
        for n in report.sizes:
            baseline = report.best(BASELINE_OF[kind], kind, n)
            for contender in ("service", BASELINE_OF[kind], "writer", "floor"):
                runs = report.runs(contender, kind, n)
                best = report.best(contender, kind, n)
                rows.append(
                    [
                        kind.upper(),
                        f"{n:,}",
                        LABELS[contender],
                        f"{best:.3f}",
                        f"{report.median(contender, kind, n):.3f}",
                        f"{runs[0].size_bytes / 1e6 / best:.0f}",
                        fmt_rss(report.peak(contender, kind, n))
                        if contender in ("service", BASELINE_OF[kind])
                        else "—",
                        f"{best / baseline:.2f}x",
                    ]
                )
    return rows


def rss_rows(report: Report) -> list[list[str]]:
    rows = []
    for kind in KINDS:
        for n in report.sizes:
            runs = report.runs("service", kind, n)
            rows.append(
                [
                    kind.upper(),
                    f"{n:,}",
                    " / ".join(fmt_rss(m.rss_before) for m in runs),
                    " / ".join(fmt_rss(m.peak_rss) for m in runs),
                    " / ".join(fmt_rss(m.peak_rss_main) for m in runs),
                    str(len(runs)),
                ]
            )
    return rows


def phase_rows(report: Report) -> list[list[str]]:
    rows = []
    for kind in KINDS:
        for n in report.sizes:
            runs = report.runs("service", kind, n)
            cells = [statistics.median(m.phases[p] for m in runs) for p in ("to running", "members", "finishing")]
            rows.append([kind.upper(), f"{n:,}", *[f"{c:.3f}" for c in cells]])
    return rows


def verdicts(report: Report) -> list[str]:
    lines = []
    for kind in KINDS:
        for n in report.sizes:
            ratio = report.time_ratio(kind, n)
            lines.append(
                f"Time, {kind.upper()} of {n:,} members: service {report.best('service', kind, n):.3f} s vs "
                f"{BASELINE_OF[kind]} {report.best(BASELINE_OF[kind], kind, n):.3f} s (best of {report.reps}) = "
                f"{ratio:.2f}x: **{verdict(ratio <= TARGET_TIME_RATIO)}** (target <= {TARGET_TIME_RATIO}x)."
            )
    small, large = min(report.sizes), max(report.sizes)
    for kind in KINDS:
        ratio = report.rss_ratio(kind)
        lines.append(
            f"Memory, {kind.upper()}: server tree peak {mib(report.peak('service', kind, large))} at {large:,} "
            f"members vs {mib(report.peak('service', kind, small))} at {small:,} = {ratio:.2f}x: "
            f"**{verdict(ratio <= TARGET_RSS_RATIO)}** (target <= {TARGET_RSS_RATIO}x; the server process alone: "
            f"{report.rss_ratio(kind, main=True):.2f}x)."
        )
    return lines


def spread(report: Report, contender: str, kind: str, members: int) -> str:
    times = [m.seconds for m in report.runs(contender, kind, members)]
    return f"{min(times):.2f}-{max(times):.2f} s"


def cpu_text(report: Report, contender: str, kind: str, members: int) -> str:
    cpus = [m.cpu for m in report.runs(contender, kind, members) if m.cpu]
    if not cpus:
        return "CPU not measured"
    user, system = statistics.median(c[0] for c in cpus), statistics.median(c[1] for c in cpus)
    return f"median CPU {user:.2f} s user + {system:.2f} s system"


def analysis(report: Report) -> list[str]:
    """Where the time goes at the larger size: phases, the writer alone, the write floor, the baselines' CPU."""
    lines = []
    small, large = min(report.sizes), max(report.sizes)
    for kind in KINDS:
        runs = report.runs("service", kind, large)
        phases = {p: statistics.median(m.phases[p] for m in runs) for p in ("to running", "members", "finishing")}
        service, writer, floor = (report.best(c, kind, large) for c in ("service", "writer", "floor"))
        base = BASELINE_OF[kind]

        def cpu(contender: str, kind: str = kind) -> str:
            return cpu_text(report, contender, kind, large)

        def ranged(contender: str, kind: str = kind) -> str:
            return spread(report, contender, kind, large)

        lines.append(
            f"{kind.upper()} of {large:,} members, best of {report.reps}: the service {service:.2f} s (medians of its "
            f"phases: {phases['to running']:.2f} s until the client saw RUNNING, i.e. the FindOrCreateBundle call "
            f"and the job claim; {phases['members']:.2f} s writing members; {phases['finishing']:.2f} s from "
            f"FINISHING to the final event). Its writer alone took {writer:.2f} s ({cpu('writer')}) and writing as "
            f"many bytes to a new file, nothing else, {floor:.2f} s (the floor). Ranges over the repetitions: "
            f"service {ranged('service')}, writer alone {ranged('writer')}, floor {ranged('floor')}. {base}: "
            f"{report.best(base, kind, large):.2f} s ({cpu(base)}), peak RSS {mib(report.peak(base, kind, large))} "
            f"at {large:,} members vs {mib(report.peak(base, kind, small))} at {small:,}."
        )
    return lines


def console_report(report: Report) -> str:
    parts = [
        report.pages,
        "",
        text_table(TIME_HEADER, time_rows(report)),
        "",
        "service RSS per build (each repetition, in order):",
        text_table(RSS_HEADER, rss_rows(report)),
        "",
        "service phases (medians, client clock):",
        text_table(PHASE_HEADER, phase_rows(report)),
        "",
        *[v.replace("**", "") for v in verdicts(report)],
        "",
        *analysis(report),
    ]
    return "\n".join(parts)


def markdown_section(report: Report) -> str:
    m = report.machine
    small, large = min(report.sizes), max(report.sizes)
    lines = [
        SECTION,
        "",
        f"Run {report.when} by `bench/bundles.py` (`make bench`).",
        "",
        f"- Machine: {machine_line(m)}. Shared: 1-minute load average {report.load[0]:.2f} before the "
        f"measurements, {report.load[1]:.2f} after.",
        f"- Inputs: {report.pages}. Each member is its own asset, uploaded once with UploadOriginal "
        f"(`skip_derivatives`, untimed); works of {small:,} and {large:,} members (the smaller is the first "
        "members of the larger). Pages are not wider than download_medium (1200 px), so the service's PDF "
        "embeds each JPEG original as it is, and its ZIP stores it as it is: the same bytes the baselines get.",
        "- Service: the real server (`python -m server`), filesystem storage, embedded Postgres, "
        "DERIVATIVES_WORKERS=2. Timed from FindOrCreateBundle until WatchProgress delivered the final "
        "STAGE_SUCCEEDED event (one blocking client). Before each repetition the works were re-titled "
        "(PutWork, untimed) so every call starts a new build. The server was warm: one untimed build of "
        f"each kind ({WARMUP_MEMBERS} members) ran first.",
        f"- Baselines, on the member files in bench/.work/: {report.tools['img2pdf']}, "
        f"`img2pdf --imgsize 150dpi --from-file - -o out.pdf` (the service's page size: 576x768 pt); "
        f"{report.tools['zip']}, `zip -0 -q out.zip -@` (file list on stdin).",
        "- Diagnostics (not contenders), each in its own spawned process: the service's writer "
        "(worker/pdf_writer.py or worker/zip_writer.py through core.storage.chunk_stream into FileStorage.put, "
        "as the build runs it) on the local files; and the floor, writing as many bytes to a new file and nothing "
        "else.",
        "- Peak RSS: the service's is the server process tree (server + 2 pool processes, summed), sampled "
        "every 50 ms during each build; a baseline's is the child's own peak (`/usr/bin/time -f %M`, its "
        "ru_maxrss; the wall time includes that wrapper's fork and exec, about a millisecond). The diagnostic "
        "rows are timed inside their own process and have no RSS here.",
        f"- Each contender ran {report.reps} time(s), interleaved (service, baseline and diagnostics for each kind "
        "and size, in an order rotated every repetition); `sync` (untimed) before each run, so no run pays for "
        "the writeback of the previous one's output. Best and median wall time; MB/s is the output size over the best "
        "time. Every output was checked (page count and page size with pypdf; ZIP entries, order and sizes; "
        "the service's fetched with ReadBundle, untimed).",
        "",
        "### Wall time and peak RSS",
        "",
        markdown_table(TIME_HEADER, time_rows(report)),
        "",
        *[f"- {v}" for v in verdicts(report)],
        "",
        "### The service's memory per build",
        "",
        "Each repetition's value in order (before the build / peak during it):",
        "",
        markdown_table(RSS_HEADER, rss_rows(report)),
        "",
        "### Where the service's time goes",
        "",
        "Phases of the service's builds, as the client saw them (medians; from FindOrCreateBundle):",
        "",
        markdown_table(PHASE_HEADER, phase_rows(report)),
        "",
        *[f"- {a}" for a in analysis(report)],
        "",
    ]
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=None, help=f"repetitions (default {DEFAULT_REPS})")
    add_docs_args(parser, f"smoke run: {QUICK_SIZES[0]} and {QUICK_SIZES[1]} members, 1 repetition, docs untouched")
    args = parser.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else DEFAULT_REPS)
    args.sizes = QUICK_SIZES if args.quick else SIZES
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    default_docs(args)
    return args


def run(args: argparse.Namespace) -> Report:
    from client.client import Client

    files = ensure_members(max(args.sizes))
    pages = describe_pages(files)
    print(pages, flush=True)
    out_dir = WORK / "bundles-out"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    try:
        with running_server(
            WORK / "bundles-service", "bundles-server-last.log", DERIVATIVES_WORKERS=str(PROCESSES)
        ) as server:
            with Client(server.address) as client:
                upload_files(client, [(asset_id(i), f, "image/jpeg") for i, f in enumerate(files)], "member pages")
                ctx = ServiceCtx(server, client, out_dir)
                warm_up(ctx, files)
                print(f"measuring {len(args.sizes)} sizes x 2 kinds x {args.reps} repetitions ...", flush=True)
                load_before = load_average()
                measured = measure(ctx, files, args.sizes, args.reps)
                load_after = load_average()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return Report(
        when=now_text(),
        machine=machine_info(),
        pages=pages,
        sizes=args.sizes,
        reps=args.reps,
        measured=measured,
        load=(load_before, load_after),
        tools=tool_versions(),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    report = run(args)
    print()
    print(console_report(report))
    problems = [f"{m.contender} {m.kind} {m.members} rep {m.rep}: {p}" for m in report.measured for p in m.problems]
    return conclude(problems, args.docs, SECTION, lambda: markdown_section(report), started)


if __name__ == "__main__":
    sys.exit(main())
