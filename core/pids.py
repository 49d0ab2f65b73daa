"""Whether a process lives: the one rule for every caller (pgserver's handle list in core/database.py, the
metrics' sweep of dead processes in core/metrics.py)."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """True while process `pid` runs (someone else's included); False once it has exited, a zombie (exited,
    not yet reaped by its parent, so `kill(pid, 0)` still finds it) included."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False  # exited since
    except OSError:
        return True  # no /proc to ask: as kill() said
    # "pid (comm) STATE ...": comm may hold spaces and parentheses, the state follows the last ")".
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")
