"""scripts/local_cluster.py (docs/deployment.md's way to try a deployment) starts, serves and stops cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT, free_port


def test_the_local_cluster_script_serves_and_stops(tmp_path: Path) -> None:
    command = [sys.executable, "scripts/local_cluster.py", "--serving", "2", "--worker-hosts", "1", "--smoke"]
    command += ["--port", str(free_port()), "--metrics-port", "0", "--dir", str(tmp_path / "cluster")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "its PDF: BUNDLE_STATUS_SUCCESS" in out and "(2 serving processes)" in out, out[-3000:]
    logs = {p.name: p.read_text() for p in (tmp_path / "cluster" / "logs").glob("*.log")}
    assert set(logs) == {"server.log", "worker-1.log"}
    assert all("derivatives.host: stopped" in text and "Traceback" not in text for text in logs.values()), logs
