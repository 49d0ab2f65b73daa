"""Tasks run in pool processes: plain functions of inputs to stored objects.

Each takes and returns picklable records (an Asset and its Definitions in, Made | Failed
out), reads and writes storage itself, and touches no database: the parent attaches
results under the concurrency contract.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from core import failpoints, metrics
from core.config import Settings, load_settings
from core.definitions import Definition
from core.derivatives import Failed, Made, object_key
from core.logs import configure_logging
from core.records import Asset, FailureClass, Location
from core.storage import ObjectMissing, ObjectStorage, open_storage

if TYPE_CHECKING:
    from worker.imaging import Rendered

log = logging.getLogger("derivatives.tasks")

_settings: Settings | None = None
_storage: ObjectStorage | None = None


def init_process(env: dict[str, str], vips_concurrency: int) -> None:
    """Pool initializer: VIPS_CONCURRENCY must be set before pyvips is first imported.

    The process's address space is capped first (DERIVATIVES_WORKER_MEMORY), then the imaging
    libraries are loaded, so their fixed cost is paid now and counted under the cap.
    """
    global _settings, _storage
    # Ctrl-C in a terminal reaches the whole process group: the host stops its pool itself (a KeyboardInterrupt
    # here would only print a traceback from the task queue's read).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(env)
    os.environ["VIPS_CONCURRENCY"] = str(vips_concurrency)
    _settings = load_settings(env)
    limit_memory(_settings.worker_memory_bytes)
    _storage = open_storage(_settings)
    import pypdfium2  # noqa: F401  (loaded now: part of every process's fixed cost, not of its first PDF)

    from worker.imaging import configure_vips

    configure_vips()
    configure_logging(_settings.log_level, _settings.log_format)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True, name="parent-watch").start()
    metrics.sample_rss("pool")  # this process's RSS on the host's metrics endpoint (a live gauge)


def limit_memory(ceiling: int) -> None:
    """RLIMIT_AS, not RLIMIT_DATA: libvips maps files (and its temporary decodes) that RLIMIT_DATA does not count.

    An allocation over the ceiling then fails (libvips "out of memory", MemoryError) and fails that
    original; the process lives on. 0 sets none; a lower hard limit wins.
    """
    if ceiling <= 0:
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (ceiling if hard == resource.RLIM_INFINITY else min(ceiling, hard), hard))


def _exit_with_parent(parent: int) -> None:
    """A pool process must not outlive its parent (killed with SIGKILL, say): it would hold memory forever.

    Its task queue never reports EOF (the child holds a write end too), so watch the parent instead.
    """
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def warmup() -> int:
    time.sleep(0.2)  # hold this process so the next warmup call starts another
    return os.getpid()


def _context() -> tuple[Settings, ObjectStorage]:
    if _settings is None or _storage is None:
        raise RuntimeError("init_process() was not run in this process")
    return _settings, _storage


def make_derivatives(asset: Asset, definitions: tuple[Definition, ...]) -> list[Made | Failed]:
    """Render every definition from one download and one decode of the original; upload each.

    Returns one entry per definition, in order: the uploaded object, or why it failed.
    """
    from worker.imaging import Limits, render_all

    settings, storage = _context()
    source = asset.original
    with tempfile.TemporaryDirectory(prefix="derive-") as tmp:
        # Read a local object in place; copy a remote one (libvips needs a seekable file for most formats).
        original = storage.local_path(source.bucket, source.key) or Path(tmp) / "original"
        try:
            if not original.exists():
                storage.download(source.bucket, source.key, original)
        except ObjectMissing:
            missing = "the original is missing from storage"
            return [Failed(d.key, missing, FailureClass.ORIGINAL_MISSING) for d in definitions]
        out_dir = Path(tmp) / "out"
        out_dir.mkdir()
        limits = Limits.from_settings(settings)
        results = render_all(original, asset.content_type, list(definitions), out_dir, limits, settings.pdf_render_dpi)
        out: list[Made | Failed] = []
        try:
            for definition, result in zip(definitions, results, strict=True):
                out.append(
                    result if isinstance(result, Failed) else _upload(storage, settings, asset, definition, result)
                )
                failpoints.hit("derivative_stored", whole_server=True)  # uploaded, not attached
        except BaseException:  # e.g. storage away on the 3rd of 9: the first 2 must not stay orphaned
            for made in out:
                if isinstance(made, Made):
                    with contextlib.suppress(Exception):
                        storage.delete(made.location.bucket, made.location.key)
            raise
        log.debug("rendered: %d of %d derivatives made", sum(isinstance(r, Made) for r in out), len(out))
        return out


def _upload(storage: ObjectStorage, settings: Settings, asset: Asset, definition: Definition, result: Rendered) -> Made:
    location = Location(definition.bucket or settings.bucket_derivatives, object_key(asset.asset_id, result.key, "jpg"))
    storage.put_file(location.bucket, location.key, result.path, content_type=result.content_type)
    return Made(
        key=result.key,
        location=location,
        content_type=result.content_type,
        size_bytes=result.size_bytes,
        width=result.width,
        height=result.height,
        sha512=result.sha512,
    )
