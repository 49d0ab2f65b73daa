"""Hostile originals through the real spawn pool, under the real per-process memory ceiling (issue 9).

Every original is generated here, small on disk. Each gives its derivatives or a short Failed reason;
no pool process crashes or is replaced (except where a crash is the point); each process's peak RSS
stays under its ceiling (RLIMIT_AS, DERIVATIVES_WORKER_MEMORY). Settings are the defaults.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.config import Settings, load_settings
from core.definitions import Definition, load_registry
from core.derivatives import Failed, Made
from core.plan import plan
from core.records import Asset, FailureClass, Location
from core.storage import open_storage
from tests import images
from worker import tasks
from worker.imaging import OUT_OF_MEMORY
from worker.pool import CHILD_ENV, WorkerCrashed, WorkerPool

REGISTRY = load_registry()
SECRET = "SECRET-7f3a"
PIXELS = "over the limit of 200000000"
DECODED = "original decodes to 1.46 GiB (14000x14000, 4 bands of 16 bits), over the limit of 1.00 GiB"
ARENA_MAX_BEFORE = os.environ.get("MALLOC_ARENA_MAX")  # this process's, before any pool is made


@dataclass(frozen=True)
class Original:
    content_type: str
    width: int  # as the server stores it (from the header)
    write: Callable[[Path], object]


def hostile_svg(path: Path) -> None:
    """xi:include of a file stored next to it, and an external entity naming /etc/passwd."""
    path.write_text(
        '<?xml version="1.0"?>\n'
        '<!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xi="http://www.w3.org/2001/XInclude" width="800" height="200">'
        '<text x="0" y="60" font-size="40"><xi:include href="secret.txt" parse="text"/></text>'
        '<text x="0" y="160" font-size="40">&x;</text></svg>'
    )


CORPUS: dict[str, Original] = {
    # 1.46 GiB decoded, ~1.5 MB on disk; interlaced, libvips must decode it whole into memory.
    "png16_rgba": Original("image/png", 14000, lambda p: p.write_bytes(images.png_zeros(14000, 14000, bit_depth=16))),
    "png16_rgba_interlaced": Original(
        "image/png", 14000, lambda p: p.write_bytes(images.png_zeros(14000, 14000, bit_depth=16, interlaced=True))
    ),
    # Valid headers over almost no data. A JPEG cannot claim more than 65535 a side (16-bit fields), and
    # libjpeg refuses more than 65500 ("Maximum supported image dimension is 65500 pixels").
    "png_claims_100000": Original(
        "image/png", 100000, lambda p: p.write_bytes(images.png_zeros(100000, 100000, data=False))
    ),
    "jpeg_claims_65500": Original("image/jpeg", 65500, lambda p: p.write_bytes(images.jpeg_claiming(65500, 65500))),
    "png_1bit_30000": Original(
        "image/png", 30000, lambda p: p.write_bytes(images.png_zeros(30000, 30000, bit_depth=1, color_type=0))
    ),
    "svg_includes": Original("image/svg+xml", 800, hostile_svg),
    "tiff_2000_pages": Original("image/tiff", 120, lambda p: images.tiff_pages(str(p), 2000)),
    # The legitimate large master: 100 MP, 16-bit RGB, 0.56 GiB decoded (streamed: over 256 MiB).
    "master_100mp_16bit": Original("image/tiff", 12000, lambda p: images.tiff16_master(str(p))),
}

EXPECTED_FAILURE = {  # reason, and its class
    "png16_rgba": (DECODED, FailureClass.TOO_LARGE),
    "png16_rgba_interlaced": (DECODED, FailureClass.TOO_LARGE),
    "png_claims_100000": (f"original is 100000x100000 = 10000000000 pixels, {PIXELS}", FailureClass.TOO_LARGE),
    "jpeg_claims_65500": (f"original is 65500x65500 = 4290250000 pixels, {PIXELS}", FailureClass.TOO_LARGE),
    "png_1bit_30000": (f"original is 30000x30000 = 900000000 pixels, {PIXELS}", FailureClass.TOO_LARGE),
    "svg_includes": (
        "not a decodable image: VipsForeignLoad: original is not a known file format",
        FailureClass.UNDECODABLE,
    ),
}
EXPECTED_MADE = {
    # Page 0 only (120 x 80), not 2000 pages stacked.
    "tiff_2000_pages": {"thumb_mini": (54, 36), "thumb_mini_2x": (108, 72), "download_full": (120, 80)},
    "master_100mp_16bit": {
        "download_full": (12000, 8400),
        "download_large": (2880, 2016),
        "download_medium": (1200, 840),
        "thumb_large_2x": (1050, 735),
        "thumb_large": (525, 368),
        "thumb_standard_2x": (416, 291),
        "thumb_standard": (208, 146),
        "thumb_mini_2x": (108, 76),
        "thumb_mini": (54, 38),
    },
}


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {name: value.strip() for name, _, value in (line.partition(":") for line in lines)}


def address_space_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max address space"):
            return int(line.split()[3])
    raise AssertionError("no address space line")


def environment(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode(errors="replace").partition("=")[::2] for e in entries if e)


class Service:
    """A storage and a real pool under the given settings: stores originals, runs make_derivatives."""

    def __init__(self, settings: Settings, processes: int) -> None:
        self.settings = settings
        self.storage = open_storage(settings)
        self.storage.ensure_buckets(settings.buckets)
        self.pool = WorkerPool(settings, processes)
        self.pids = self.pool.warm()

    def store(self, name: str, original: Original, scratch: Path) -> tuple[Asset, tuple[Definition, ...]]:
        path = scratch / name
        original.write(path)
        location = Location(self.settings.bucket_originals, f"{name}/original")
        self.storage.put_file(location.bucket, location.key, path)
        if name == "svg_includes":  # another object in the same place: librsvg resolves includes next to the file
            secret = scratch / "secret.txt"
            secret.write_text(SECRET * 20)
            self.storage.put_file(location.bucket, f"{name}/secret.txt", secret)
        now = dt.datetime.now(dt.UTC)
        asset = Asset(
            name, original.content_type, path.stat().st_size, "0" * 128, original.width, 0, name, location, (), now, now
        )
        return asset, plan(REGISTRY, asset).make

    def render_all(self, work: dict[str, tuple[Asset, tuple[Definition, ...]]]) -> dict[str, list[Made | Failed]]:
        async def run() -> list[list[Made | Failed]]:
            return await asyncio.gather(*(self.pool.run(tasks.make_derivatives, a, d) for a, d in work.values()))

        return dict(zip(work, asyncio.run(run()), strict=True))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data = tmp_path_factory.mktemp("hostile-data")
    service = Service(load_settings({"DERIVATIVES_DATA_DIR": str(data)}), processes=2)
    yield service
    service.pool.shutdown()


def test_hostile_corpus_fails_briefly_or_renders_under_the_ceiling(service: Service, tmp_path: Path) -> None:
    settings = service.settings
    assert (settings.max_pixels, settings.max_decoded_bytes, settings.worker_memory_bytes) == (
        200_000_000,
        1024**3,
        2 * 1024**3,
    )
    work = {name: service.store(name, original, tmp_path) for name, original in CORPUS.items()}
    assert all(path.stat().st_size < 5_000_000 for path in tmp_path.iterdir())  # small on disk

    results = service.render_all(work)

    for name, (reason, failure_class) in EXPECTED_FAILURE.items():
        definitions = work[name][1]
        assert len(definitions) >= 6, name  # every size the width allows
        assert results[name] == [Failed(d.key, reason, failure_class) for d in definitions], name
        assert len(reason) <= 200 and "\n" not in reason
    for name, sizes in EXPECTED_MADE.items():
        made = {r.key: r for r in results[name] if isinstance(r, Made)}
        assert {key: (m.width, m.height) for key, m in made.items()} == sizes, results[name]
        for m in made.values():
            assert service.storage.stat(m.location.bucket, m.location.key) is not None

    # Nothing crashed or was replaced; every process ran under its ceiling, and stayed there.
    assert service.pool.replaced == 0
    for pid in service.pids:
        os.kill(pid, 0)  # still alive
        assert address_space_limit(pid) == settings.worker_memory_bytes
        peak_rss_kib = int(status(pid)["VmHWM"].split()[0])
        assert 0 < peak_rss_kib * 1024 < settings.worker_memory_bytes, (pid, status(pid)["VmHWM"])
        assert environment(pid).get("MALLOC_ARENA_MAX") == (ARENA_MAX_BEFORE or CHILD_ENV["MALLOC_ARENA_MAX"])
    assert set(service.pool.warm()) <= set(service.pids)
    assert os.environ.get("MALLOC_ARENA_MAX") == ARENA_MAX_BEFORE  # set for the children only


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_allocation_failure_fails_the_asset_and_only_a_real_crash_replaces_the_process(tmp_path: Path) -> None:
    """A 1 GiB ceiling and no decoded-bytes limit: the interlaced 1.46 GiB PNG must be decoded whole, which the
    ceiling refuses. That asset fails with the memory reason, in the same process, which renders the next one."""
    env = {
        "DERIVATIVES_DATA_DIR": str(tmp_path / "data"),
        "DERIVATIVES_WORKER_MEMORY": str(1024**3),
        "DERIVATIVES_MAX_DECODED_BYTES": str(4 * 1024**3),
    }
    service = Service(load_settings(env), processes=1)
    try:
        bomb = service.store("png16_rgba_interlaced", CORPUS["png16_rgba_interlaced"], tmp_path)
        fine = service.store(
            "fine", Original("image/png", 600, lambda p: p.write_bytes(images.png(600, 400))), tmp_path
        )
        results = service.render_all({"bomb": bomb})["bomb"]
        assert results == [Failed(d.key, OUT_OF_MEMORY, FailureClass.OUT_OF_MEMORY) for d in bomb[1]]
        assert all(isinstance(r, Made) for r in service.render_all({"fine": fine})["fine"])
        assert service.pool.replaced == 0 and service.pool.warm() == service.pids

        with pytest.raises(WorkerCrashed):  # a real crash: the process is gone, the pool replaced
            asyncio.run(service.pool.run(_die))
        assert service.pool.replaced == 1
        assert all(isinstance(r, Made) for r in service.render_all({"fine": fine})["fine"])
        assert service.pool.warm() != service.pids
    finally:
        service.pool.shutdown()
