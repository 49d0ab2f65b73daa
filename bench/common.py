"""Helpers shared by the benchmark scripts in bench/ (not a benchmark itself).

Paths, the header every result file starts with (machine, when, revision), writing a result
file, generated page images, interleaved repetitions, process RSS and CPU, spawn pools, and the
real server (embedded Postgres + `python -m server` on filesystem storage, 127.0.0.1 only)
started and stopped around a measurement. The scripts run as modules from the repository root
(`.venv/bin/python -m bench.<name>`), so `bench.common` and `tests.harness` import as packages.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import pyvips

    from client.client import Client
    from tests.harness import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"  # gitignored: generated inputs, outputs, servers' data
RESULTS = ROOT / "bench" / "results"
SAMPLE_SECONDS = 0.05
T = TypeVar("T")


# --- the run: header, arguments, result file ------------------------------------------------


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


def revision() -> str:
    """The checkout's commit, with "+changes" when the tree differs from it."""
    git = ["git", "-C", str(ROOT)]
    rev = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return (rev or "unknown") + ("+changes" if dirty.stdout.strip() else "")


def load_average() -> float:
    return os.getloadavg()[0]


def header(benchmark: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """What every result file starts with; the measured numbers are added after it."""
    return {
        "benchmark": benchmark,
        "when": now_text(),
        "revision": revision(),
        "machine": machine_info(),
        "parameters": parameters,
    }


def arguments(doc: str | None, quick: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke run ({quick}); writes bench/.work/, not results/")
    parser.add_argument("--out", type=Path, default=None, help="result file (default bench/results/<name>.json)")
    return parser


def write_results(name: str, out: Path | None, quick: bool, results: dict[str, Any], problems: list[str]) -> int:
    """Write the results as JSON, unless some output was wrong: then nothing is written and the exit status is 1.

    A slow number never fails a run.
    """
    if problems:
        print(f"\nWRONG OUTPUT ({len(problems)}):", *problems[:50], sep="\n  ", file=sys.stderr)
        print("results not written: the numbers are not trustworthy", file=sys.stderr)
        return 1
    path = out or (WORK / f"{name}-quick.json" if quick else RESULTS / f"{name}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {path}; render with .venv/bin/python -m bench.render")
    return 0


def interleaved(reps: int, contenders: Sequence[T]) -> Iterator[tuple[int, T]]:
    """(repetition, contender): every contender once per repetition, A B C, A B C, ..., so they share the noise."""
    for rep in range(1, reps + 1):
        for contender in contenders:
            yield rep, contender


# --- generated images -----------------------------------------------------------------------


def make_missing(paths: list[Path], make: Callable[[Path], None], what: str) -> list[Path]:
    """Make each path that does not exist yet (into a temporary name first: never a half-written file)."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"generating {len(missing)} {what} into {missing[0].parent} ...", flush=True)
    for path in missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}")
        make(tmp)
        tmp.replace(path)
    return paths


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

    def ensure(self) -> list[Path]:
        def make(path: Path) -> None:
            seed = 1000 + int(path.stem.split("-")[-1])
            text_page(seed, self.width, self.height).jpegsave(str(path), Q=self.quality, keep="none")

        paths = [WORK / self.name / f"page-{i:03d}.jpg" for i in range(self.count)]
        return make_missing(paths, make, f"pages of {self.width}x{self.height}")

    def describe(self, paths: list[Path]) -> dict[str, Any]:
        sizes = [p.stat().st_size for p in paths]
        return {
            "distinct": min(len(paths), self.count),
            "width": self.width,
            "height": self.height,
            "quality": self.quality,
            "min_bytes": min(sizes),
            "max_bytes": max(sizes),
            "mean_bytes": sum(sizes) / len(sizes),
        }


# Book pages at 150 dpi, not wider than download_medium: bundles embed them as they are.
BOOK_PAGES = PageSet("pages-1200-v1", 1200, 1600, 88, 50)


# --- processes ------------------------------------------------------------------------------


def psutil() -> Any:
    """The psutil module (it has no type information installed)."""
    import psutil as module  # type: ignore[import-untyped,unused-ignore]

    return module


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (the server and its pool processes)."""
    try:
        root = psutil().Process(pid)
        return [root.pid, *(child.pid for child in root.children(recursive=True))]
    except psutil().Error:
        return []


def rss_of(pids: list[int]) -> tuple[int, int]:
    """(summed RSS of `pids`, RSS of the first one); processes that are gone count 0."""
    total = first = 0
    for i, pid in enumerate(pids):
        try:
            rss = int(psutil().Process(pid).memory_info().rss)
        except psutil().Error:
            continue
        total += rss
        if i == 0:
            first = rss
    return total, first


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each of `pids` still alive."""
    out = {}
    for pid in pids:
        try:
            times = psutil().Process(pid).cpu_times()
        except psutil().Error:
            continue
        out[pid] = float(times.user + times.system)
    return out


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
    service_dir: Path, log_copy: str, definitions_toml: str = "", checkout: Path = ROOT, **extra_env: str
) -> Iterator[ServerProcess]:
    """Embedded Postgres + `python -m server` on filesystem storage under `service_dir` (wiped first).

    `definitions_toml`, when given, is written to `service_dir`/definitions.toml and used as the
    server's DERIVATIVES_DEFINITIONS. Health is checked every 2 s (the production default, not the
    tests' 0.5 s) unless `extra_env` says otherwise. Both processes are stopped on the way out,
    `service_dir` is removed, and the server log is copied to bench/.work/`log_copy`. `checkout`: the
    server of another checkout of the repository (a before/after).
    """
    from tests.harness import Postgres, ServerProcess, server_env

    shutil.rmtree(service_dir, ignore_errors=True)
    service_dir.mkdir(parents=True)
    extra_env.setdefault("DERIVATIVES_HEALTH_INTERVAL", "2.0")
    if definitions_toml:
        definitions = service_dir / "definitions.toml"
        definitions.write_text(definitions_toml)
        extra_env["DERIVATIVES_DEFINITIONS"] = str(definitions)
    postgres: Postgres | None = None
    server: ServerProcess | None = None
    try:
        postgres = Postgres(service_dir / "pg")
        env = server_env("file", postgres.new_database("bench"), service_dir / "data", None, **extra_env)
        server = ServerProcess(env, service_dir / "server.log", cwd=checkout).start()
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


def wait_for_job(client: Client, job_id: str, timeout: float, poll: float = 0.0) -> Any:
    """The job once it is final (pb.Job): watched (WatchJob, the server pushes its progress) or, with `poll`
    seconds, polled with GetJob. A watch that ends early, or `timeout` passing, returns the job as it is then
    (the caller checks its stage)."""
    from client.client import TERMINAL

    deadline = time.monotonic() + timeout  # only catches a hang
    if poll <= 0:
        for event in client.watch(job_id=job_id):
            if event.HasField("job") and event.job.stage in TERMINAL:
                return event.job  # the final event carries the job, failures and all
            if event.stage in TERMINAL or time.monotonic() > deadline:
                break
        return client.get_job(job_id)
    job = client.get_job(job_id)
    while job.stage not in TERMINAL and time.monotonic() < deadline:
        time.sleep(poll)
        job = client.get_job(job_id)
    return job


def upload_files(client: Client, files: list[tuple[str, Path, str]], what: str) -> list[str]:
    """UploadOriginal (the bytes, streamed; `skip_derivatives`) each (asset_id, path, content_type); untimed."""
    print(f"uploading {len(files)} {what} to the service (untimed) ...", flush=True)
    for asset_id, path, content_type in files:
        client.upload(asset_id, path, content_type, skip_derivatives=True)
    return [asset_id for asset_id, _, _ in files]
