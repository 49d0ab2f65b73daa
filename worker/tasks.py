"""Tasks run in pool processes: plain functions of inputs to stored objects.

Each takes and returns picklable plain data, reads and writes storage itself, and
touches no database: the parent attaches results under the concurrency contract.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from core.config import Settings, load_settings
from core.definitions import Definition
from core.derivatives import object_key
from core.storage import ObjectMissing, ObjectStorage, open_storage

log = logging.getLogger("derivatives.tasks")

_settings: Settings | None = None
_storage: ObjectStorage | None = None


def init_process(env: dict[str, str], vips_concurrency: int) -> None:
    """Pool initializer: VIPS_CONCURRENCY must be set before pyvips is first imported."""
    global _settings, _storage
    os.environ.update(env)
    os.environ["VIPS_CONCURRENCY"] = str(vips_concurrency)
    _settings = load_settings(env)
    _storage = open_storage(_settings)
    from worker.imaging import configure_vips

    configure_vips()
    logging.basicConfig(level=_settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pyvips").setLevel(logging.WARNING)  # libvips logs every operation at INFO
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True, name="parent-watch").start()


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


def make_derivatives(asset: dict[str, Any], definitions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Render every definition from one download and one decode of the original; upload each.

    Returns one dict per definition: the uploaded object's description, or
    {"key", "failed": reason}.
    """
    from worker.imaging import render_all

    settings, storage = _context()
    plan = [Definition.from_dict(d) for d in definitions]
    with tempfile.TemporaryDirectory(prefix="derive-") as tmp:
        # Read a local object in place; copy a remote one (libvips needs a seekable file for most formats).
        original = storage.local_path(asset["bucket"], asset["object_key"]) or Path(tmp) / "original"
        try:
            if not original.exists():
                storage.download(asset["bucket"], asset["object_key"], original)
        except ObjectMissing:
            return [{"key": d.key, "failed": "the original is missing from storage"} for d in plan]
        out_dir = Path(tmp) / "out"
        out_dir.mkdir()
        results = render_all(original, asset["content_type"], plan, out_dir, settings.max_pixels)
        out: list[dict[str, Any]] = []
        try:
            _upload(storage, settings, asset, plan, results, out)
        except BaseException:  # e.g. storage away on the 3rd of 9: the first 2 must not stay orphaned
            for made in out:
                if "failed" not in made:
                    with contextlib.suppress(Exception):
                        storage.delete(made["bucket"], made["object_key"])
            raise
        return out


def _upload(
    storage: ObjectStorage,
    settings: Settings,
    asset: dict[str, Any],
    plan: list[Definition],
    results: list[Any],
    out: list[dict[str, Any]],
) -> None:
    """Store each rendered file, appending its description to `out` as it goes."""
    from worker.imaging import Failed

    for definition, result in zip(plan, results, strict=True):
        if isinstance(result, Failed):
            out.append({"key": result.key, "failed": result.reason})
            continue
        bucket = definition.bucket or settings.bucket_derivatives
        key = object_key(asset["asset_id"], result.key, "jpg")
        storage.put_file(bucket, key, result.path, content_type=result.content_type)
        out.append(
            {
                "key": result.key,
                "bucket": bucket,
                "object_key": key,
                "content_type": result.content_type,
                "size_bytes": result.size_bytes,
                "width": result.width,
                "height": result.height,
                "sha512": result.sha512,
            }
        )
