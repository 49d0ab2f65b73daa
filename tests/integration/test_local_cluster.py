"""scripts/local_cluster.py (docs/deployment.md's way to try a deployment) starts, serves, shows every host's
metrics and stops cleanly."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT, free_port


def test_the_local_cluster_script_serves_and_stops(tmp_path: Path) -> None:
    command = [sys.executable, "scripts/local_cluster.py", "--serving", "2", "--worker-hosts", "1", "--smoke"]
    command += ["--port", str(free_port()), "--metrics-port", "auto", "--dir", str(tmp_path / "cluster")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "its PDF: BUNDLE_STATUS_SUCCESS" in out and "(2 serving processes)" in out, out[-3000:]
    # Every host's endpoint was scraped (a free port each), and showed samples.
    scraped = {
        name: (int(count), port)
        for name, count, port in re.findall(
            r"^\s+(\S+): (\d+) samples at http://127\.0\.0\.1:(\d+)/metrics$", out, re.M
        )
    }
    assert set(scraped) == {"server", "worker-1"}, out[-3000:]
    assert all(count > 0 for count, _ in scraped.values()), scraped
    assert len({port for _, port in scraped.values()}) == 2, scraped
    logs = {p.name: p.read_text() for p in (tmp_path / "cluster" / "logs").glob("*.log")}
    assert set(logs) == {"server.log", "worker-1.log"}
    assert all("derivatives.host: stopped" in text and "Traceback" not in text for text in logs.values()), logs
