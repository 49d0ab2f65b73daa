"""Logging for every process (servers, worker hosts, pool processes): one format, quiet libraries,
and the caller's name on every line of its calls.

The gRPC layer sets `principal` for the duration of a call; every record logged in that call's
context (and in tasks it starts) carries ` [principal]` after the logger's name.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

# The authenticated caller of the call being served ("" outside calls or without authentication).
principal: ContextVar[str] = ContextVar("principal", default="")


class _PrincipalFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        name = principal.get()
        record.principal = f" [{name}]" if name else ""
        return True


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s%(principal)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _PrincipalFilter) for f in handler.filters):
            handler.addFilter(_PrincipalFilter())
    for noisy in ("pgserver", "pyvips", "uvicorn.error"):  # subprocesses, deprecations, a second start-up banner
        logging.getLogger(noisy).setLevel(logging.WARNING)
