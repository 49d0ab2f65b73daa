"""core/logs.py: the context on each record, the JSON and text formats, the context carried to a pool process."""

from __future__ import annotations

import io
import json
import logging
import pickle
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pytest

from core import logs


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]]]:
    """A logger of its own with one handler (the context filter on it), not the root's."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs._ContextFilter())
    logger = logging.getLogger("derivatives.test-logs")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, stream, handler
    logger.removeHandler(handler)


def test_json_lines_carry_the_context_that_is_set(
    capture: tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]],
) -> None:
    logger, stream, handler = capture
    handler.setFormatter(logs.JsonFormatter())
    logger.info("outside")
    token = logs.principal.set("alice")
    try:
        with logs.about(job="6f1c1a57-0000-4000-8000-000000000001", work="work-1"):
            with logs.about(asset="asset-1"):
                logger.warning("inside %s", "both", extra={"ignored": 1})
            logger.info("job only\nsecond line")
    finally:
        logs.principal.reset(token)
    try:
        raise ValueError("bad")
    except ValueError:
        logger.exception("failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4  # a message with a newline is still one line
    outside, inside, job_only, failed = (json.loads(line) for line in lines)
    assert set(outside) == {"time", "level", "logger", "message"}
    assert outside["logger"] == "derivatives.test-logs" and outside["level"] == "INFO"
    assert outside["time"].endswith("+00:00") and "T" in outside["time"]
    assert inside == {
        "time": inside["time"],
        "level": "WARNING",
        "logger": "derivatives.test-logs",
        "message": "inside both",
        "principal": "alice",
        "job_id": "6f1c1a57-0000-4000-8000-000000000001",
        "asset_id": "asset-1",
        "work_id": "work-1",
    }
    assert "asset_id" not in job_only and job_only["work_id"] == "work-1"  # the inner block's id is gone
    assert job_only["message"] == "job only\nsecond line"
    assert "principal" not in failed and "job_id" not in failed
    assert failed["exception"].startswith("Traceback") and "ValueError: bad" in failed["exception"]


def test_text_lines_show_the_context_compactly(
    capture: tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]],
) -> None:
    logger, stream, handler = capture
    handler.setFormatter(logging.Formatter("%(name)s%(context)s: %(message)s"))
    logger.info("plain")
    token = logs.principal.set("bob")
    try:
        with logs.about(job="j-1", asset="a-1"):
            logger.info("about")
    finally:
        logs.principal.reset(token)
    assert stream.getvalue().splitlines() == [
        "derivatives.test-logs: plain",
        "derivatives.test-logs [bob] job=j-1 asset=a-1: about",
    ]


def test_trace_ids_come_from_the_installed_source(
    capture: tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]],
) -> None:
    logger, stream, handler = capture
    handler.setFormatter(logs.JsonFormatter())
    previous = logs._span_ids
    ids: tuple[str, str] | None = ("a" * 32, "b" * 16)
    logs.show_trace_ids(lambda: ids)
    try:
        logger.info("in a span")
        ids = None  # outside any span
        logger.info("outside")
    finally:
        logs._span_ids = previous
    in_span, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (in_span["trace_id"], in_span["span_id"]) == ("a" * 32, "b" * 16)
    assert "trace_id" not in outside and "span_id" not in outside


def _log_in_child() -> str:
    """In the pool process: one line through a JSON handler, returned (the child's stderr is not ours to read)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs._ContextFilter())
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("derivatives.child")
    logger.addHandler(handler)
    logger.warning("in the child")
    return stream.getvalue()


def test_a_pool_task_carries_the_callers_context() -> None:
    with logs.about(job="j-9", asset="a-9", work="w-9"):
        carried = logs.carry()
    assert pickle.loads(pickle.dumps(carried)) == carried
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        line = pool.submit(logs.run_carried, carried, _log_in_child).result(timeout=60)
    record = json.loads(line)
    assert (record["job_id"], record["asset_id"], record["work_id"]) == ("j-9", "a-9", "w-9")
    assert logs.job_id.get() == ""  # the parent's own context is untouched


def test_json_mode_routes_warnings_through_logging() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, sys.excepthook, threading.excepthook)
    stream = io.StringIO()
    root.handlers = [logging.StreamHandler(stream)]
    try:
        logs.configure_logging("info", "json")
        logging.getLogger("py.warnings").propagate = True
        import warnings

        warnings.warn("something old", UserWarning, stacklevel=1)
        logging.getLogger("derivatives.x").info("hello")
    finally:
        logging.captureWarnings(False)
        root.handlers, sys.excepthook, threading.excepthook = saved[0], saved[2], saved[3]
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["logger"] for line in lines][-1] == "derivatives.x"
    assert any("something old" in line["message"] for line in lines)
