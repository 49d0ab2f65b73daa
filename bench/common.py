"""Helpers shared by the benchmark scripts in bench/ (not a benchmark itself).

Paths, machine information, text and markdown tables, rewriting one `## ` section of
docs/benchmarks.md, peak RSS of a process tree, spawn pools, and the real server
(embedded Postgres + `python -m server` on filesystem storage) started and stopped
around a measurement. The scripts run as modules from the repository root
(`.venv/bin/python -m bench.<name>`), so `bench.common` and `tests.harness` import as packages.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent

if TYPE_CHECKING:
    import pyvips

    from client.client import Client
    from tests.harness import ServerProcess

WORK = ROOT / "bench" / ".work"  # gitignored: generated inputs, outputs, servers' data
DOCS = ROOT / "docs" / "benchmarks.md"
DOCS_HEADER = """# Benchmarks

Numbers here are ratios from one run on a shared 2-core machine: compare the rows of
one section with each other, not absolute numbers across runs or machines.
Reproduce with `make bench` (or `.venv/bin/python -m bench.thumbnails`).
"""
SAMPLE_SECONDS = 0.05


# --- machine --------------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    import PIL
    import pyvips

    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    cli = "not installed"
    if shutil.which("vipsthumbnail"):
        cli = subprocess.run(["vipsthumbnail", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "libvips": f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}",
        "vipsthumbnail": cli,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def machine_line(machine: dict[str, str]) -> str:
    return f"{machine['nproc']} cores ({machine['cpu']}), Linux {machine['kernel']}, Python {machine['python']}"


def now_text() -> str:
    return dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def load_average() -> float:
    return os.getloadavg()[0]


# --- generated pages ------------------------------------------------------------------------

WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no out up into than them can more"
).split()


def text_page(seed: int, width: int, height: int) -> pyvips.Image:
    """A scanned-looking book page: justified serif text on off-white paper with fibre, grain and shading.

    The layout scales with the size (150 dpi text at 1200 px wide), so pages of any size look alike.
    """
    import pyvips

    rnd = random.Random(seed)
    paragraphs = [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(40, 90))).capitalize() + "." for _ in range(9)]
    scale = width / 1200
    margin = round(110 * scale)
    ink = pyvips.Image.text(
        "\n\n".join(paragraphs),
        width=width - 2 * margin,
        height=height - 2 * margin,
        dpi=round(150 * scale),
        font="serif",
        justify=True,
        wrap="word",
    ).embed(margin, margin, width, height)
    grain = pyvips.Image.gaussnoise(width, height, sigma=3.5, mean=0, seed=seed)
    fibre = pyvips.Image.perlin(width, height, cell_size=round(24 * scale), seed=seed + 1) * 6
    xy = pyvips.Image.xyz(width, height)
    shading = xy[0] * (14 / width) + xy[1] * (10 / height)
    paper = 236 - shading + grain + fibre
    grey = paper * (1 - ink / 255 * 0.85)
    return grey.bandjoin([grey * 0.97, grey * 0.88]).cast("uchar").copy(interpretation="srgb")


@dataclass(frozen=True)
class PageSet:
    """`count` distinct baseline JPEG pages of one size, made once into bench/.work/`name`/.

    Bump the name's version suffix when the generator changes.
    """

    name: str
    width: int
    height: int
    quality: int
    count: int

    @property
    def directory(self) -> Path:
        return WORK / self.name

    def ensure(self) -> list[Path]:
        self.directory.mkdir(parents=True, exist_ok=True)
        pages = [self.directory / f"page-{i:03d}.jpg" for i in range(self.count)]
        missing = [p for p in pages if not p.exists()]
        if missing:
            print(
                f"generating {len(missing)} pages of {self.width}x{self.height} into {self.directory} ...", flush=True
            )
        for path in missing:
            tmp = path.with_name(f".tmp-{path.name}")
            image = text_page(1000 + int(path.stem.split("-")[1]), self.width, self.height)
            image.jpegsave(str(tmp), Q=self.quality, keep="none")
            tmp.replace(path)  # never leave a half-written page behind
        return pages


# Book pages at 150 dpi, not wider than download_medium: bundles embed them as they are.
BOOK_PAGES = PageSet("pages-1200-v1", 1200, 1600, 88, 50)


# --- tables and the docs file ---------------------------------------------------------------


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.0f} MiB"


def replace_section(text: str, title: str, section: str) -> str:
    """`text` with the section titled `title` replaced by `section` (appended if absent); others kept."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == title), None)
    if start is None:
        return text.rstrip("\n") + "\n\n" + section
    end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
    rest = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + rest if rest else "")


def write_docs(path: Path, title: str, section: str) -> None:
    text = path.read_text() if path.exists() else DOCS_HEADER
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(text, title, section))


def add_docs_args(parser: argparse.ArgumentParser, quick_help: str) -> None:
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--docs", type=Path, default=None, help=f"markdown file to update (default {DOCS})")


def default_docs(args: argparse.Namespace) -> None:
    """A full run updates docs/benchmarks.md unless told otherwise; a --quick run leaves it alone."""
    if args.docs is None and not args.quick:
        args.docs = DOCS


def conclude(problems: list[str], docs: Path | None, title: str, section: Callable[[], str], started: float) -> int:
    """The end of every benchmark: wrong output fails the run and leaves the docs alone; else update them.

    Exit status 1 only for wrong output, never for a slow number.
    """
    if problems:
        print(f"\nWRONG OUTPUT ({len(problems)}):", *problems[:50], sep="\n  ", file=sys.stderr)
        print("docs not updated: the numbers above are not trustworthy", file=sys.stderr)
        return 1
    if docs is not None:
        write_docs(docs, title, section())
        print(f"\nupdated {docs} ({title!r})")
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


# --- processes ------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (the server and its pool processes)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root.pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.Error:
        return []


def rss_of(pids: list[int]) -> tuple[int, int]:
    """(summed RSS of `pids`, RSS of the first one); processes that are gone count 0."""
    import psutil

    total = first = 0
    for i, pid in enumerate(pids):
        try:
            rss = psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
        total += rss
        if i == 0:
            first = rss
    return total, first


class RssSampler:
    """Peak summed RSS of a process tree, sampled every 50 ms in a thread.

    `peak` is the summed peak; `peak_first` the peak of the first pid alone (the tree's root).
    """

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids
        self.peak = 0
        self.peak_first = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            total, first = rss_of(self.pids())
            self.peak = max(self.peak, total)
            self.peak_first = max(self.peak_first, first)
            self._stop.wait(SAMPLE_SECONDS)


def spawn_pool(processes: int, initializer: Callable[..., None] | None = None, *initargs: Any) -> ProcessPoolExecutor:
    pool = ProcessPoolExecutor(
        max_workers=processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=initializer,
        initargs=initargs,
    )
    list(pool.map(time.sleep, [0.2] * processes))  # start every process now, untimed
    return pool


# --- the real server ------------------------------------------------------------------------


@contextmanager
def running_server(
    service_dir: Path, log_copy: str, definitions_toml: str = "", **extra_env: str
) -> Iterator[ServerProcess]:
    """Embedded Postgres + `python -m server` on filesystem storage under `service_dir` (wiped first).

    `definitions_toml`, when given, is written to `service_dir`/definitions.toml and used as the
    server's DERIVATIVES_DEFINITIONS. Both processes are stopped on the way out, `service_dir` is
    removed, and the server log is copied to bench/.work/`log_copy`.
    """
    from tests.harness import Postgres, ServerProcess, server_env

    shutil.rmtree(service_dir, ignore_errors=True)
    service_dir.mkdir(parents=True)
    if definitions_toml:
        definitions = service_dir / "definitions.toml"
        definitions.write_text(definitions_toml)
        extra_env["DERIVATIVES_DEFINITIONS"] = str(definitions)
    postgres: Postgres | None = None
    server: ServerProcess | None = None
    try:
        postgres = Postgres(service_dir / "pg")
        env = server_env("file", postgres.new_database("bench"), service_dir / "data", None, **extra_env)
        server = ServerProcess(env, service_dir / "server.log").start()
        yield server
    finally:
        if server is not None:
            code = server.stop()
            if code != 0:
                print(f"warning: server exited with {code}", file=sys.stderr)
        if postgres is not None:
            postgres.stop()
        log = service_dir / "server.log"
        if log.exists():
            shutil.copyfile(log, WORK / log_copy)  # kept for a look at what the server did
        shutil.rmtree(service_dir, ignore_errors=True)


def server_pids(server: ServerProcess) -> list[int]:
    assert server.proc is not None
    return process_tree(server.proc.pid)


def put_work(client: Client, work_id: str, title: str, members: list[str]) -> None:
    from derivatives.v1 import derivatives_pb2 as pb

    client.stub.PutWork(pb.PutWorkRequest(work_id=work_id, title=title, member_asset_ids=members))


def upload_files(client: Client, files: list[tuple[str, Path, str]], what: str) -> list[str]:
    """UploadOriginal (streamed, `skip_derivatives`) each (asset_id, path, content_type); untimed."""
    print(f"uploading {len(files)} {what} to the service (untimed) ...", flush=True)
    for asset_id, path, content_type in files:
        client.upload(asset_id, path, content_type, skip_derivatives=True)
    return [asset_id for asset_id, _, _ in files]
