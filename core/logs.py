"""Logging for every process (servers, worker hosts, pool processes): one format, quiet libraries,
and on every line what it concerns.

Context variables name what the code running now is about: the caller (`principal`, set by the
gRPC and HTTP layers for a call), the job (the runner), the asset (the renderer, a request naming
one), the work (a bundle job, a request naming one). A filter on the root handlers copies them,
and the current trace and span ids when tracing is on (core/tracing.py), onto every record, so
every line logged in that context — in tasks it starts, in threads `asyncio.to_thread` runs, and in
the pool process doing the work (`carry` / `run_carried`) — carries them.

Two formats (DERIVATIVES_LOG_FORMAT): `text`, one readable line
(`... INFO derivatives.runner [alice] job=… work=… trace=…: message`), and `json`, one JSON object
per line (`JsonFormatter`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar, copy_context
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

# The authenticated caller of the call being served ("" outside calls or without authentication).
principal: ContextVar[str] = ContextVar("principal", default="")
# What the running code concerns ("" when nothing): set with `about`, or directly in a task of its own.
job_id: ContextVar[str] = ContextVar("job_id", default="")
asset_id: ContextVar[str] = ContextVar("asset_id", default="")
work_id: ContextVar[str] = ContextVar("work_id", default="")
# The trace a pool process works for (its parent's span, carried with the task); unused where tracing is on.
_carried_trace: ContextVar[tuple[str, str]] = ContextVar("carried_trace", default=("", ""))

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"
FORMATS = ("text", "json")
# The record attributes the filter sets, in the order JSON lines and text lines show them.
FIELDS = ("proc", "principal", "trace_id", "span_id", "job_id", "asset_id", "work_id")
# Which of a host's serving processes logs ("server-2", server/child.py); "" for a host's only or parent process.
_process_label = ""

# (trace id, span id) of the current span as hex, or None: installed by core/tracing.py when tracing is on.
_span_ids: Callable[[], tuple[str, str] | None] | None = None


def show_trace_ids(source: Callable[[], tuple[str, str] | None]) -> None:
    """Put the current trace and span ids on every record (core/tracing.py, once tracing is on)."""
    global _span_ids
    _span_ids = source


@contextlib.contextmanager
def about(*, job: str = "", asset: str = "", work: str = "") -> Iterator[None]:
    """Within the block, log lines name this job, asset and work (the ones given; the others are kept)."""
    tokens = [(var, var.set(value)) for var, value in ((job_id, job), (asset_id, asset), (work_id, work)) if value]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def trace_ids() -> tuple[str, str]:
    """The current (trace id, span id) as hex, ("", "") outside a span or with tracing off."""
    if _span_ids is not None:
        ids = _span_ids()
        if ids is not None:
            return ids
    return _carried_trace.get()


# --- across the process pool ------------------------------------------------------------------------


@dataclass(frozen=True)
class Carried:
    """What a pool task's log lines concern, taken in the parent (`carry`) and set in the child."""

    principal: str
    job_id: str
    asset_id: str
    work_id: str
    trace_id: str
    span_id: str


def carry() -> Carried:
    trace, span = trace_ids()
    return Carried(principal.get(), job_id.get(), asset_id.get(), work_id.get(), trace, span)


T = TypeVar("T")


def run_carried(carried: Carried, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(*args)` (in a pool process) with the parent's context on its log lines."""

    def run() -> T:
        principal.set(carried.principal)
        job_id.set(carried.job_id)
        asset_id.set(carried.asset_id)
        work_id.set(carried.work_id)
        _carried_trace.set((carried.trace_id, carried.span_id))
        return fn(*args)

    return copy_context().run(run)


# --- records and formats ----------------------------------------------------------------------------


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        name, job, asset, work = principal.get(), job_id.get(), asset_id.get(), work_id.get()
        trace, span = trace_ids()
        record.principal, record.job_id, record.asset_id, record.work_id = name, job, asset, work
        record.trace_id, record.span_id = trace, span
        record.proc = _process_label
        tags = (("proc", _process_label), ("job", job), ("asset", asset), ("work", work), ("trace", trace))
        record.context = (f" [{name}]" if name else "") + "".join(f" {k}={v}" for k, v in tags if v)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the context that is set
    (proc, principal, trace_id, span_id, job_id, asset_id, work_id), and the exception's traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, str] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, "")
            if value:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str, fmt: str = "text", process: str = "") -> None:
    """The root handler (stderr) in `fmt` ("text" or "json"), the context filter on every root handler;
    `process` names this process on each of its lines (`proc=`) when a host has several."""
    global _process_label
    _process_label = process
    logging.basicConfig()
    logging.getLogger().setLevel(level.upper())
    formatter = JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
        if not any(isinstance(f, _ContextFilter) for f in handler.filters):
            handler.addFilter(_ContextFilter())
    for noisy in ("pgserver", "pyvips", "uvicorn.error"):  # subprocesses, deprecations, a second start-up banner
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if fmt == "json":  # what Python would print past logging goes through it, so every line stays JSON
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_thread_uncaught


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("derivatives").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_thread_uncaught(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("derivatives").error(
        "uncaught exception in thread %s", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback)
    )
