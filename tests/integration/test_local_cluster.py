"""scripts/local_cluster.py (docs/deployment.md's way to try a deployment) starts, serves, shows every host's
metrics and stops cleanly."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.harness import ROOT, free_port


@pytest.mark.parametrize("run", [1, 2])
def test_the_local_cluster_script_serves_and_stops(tmp_path_factory: pytest.TempPathFactory, run: int) -> None:
    """Twice in the same directory: the second run's logs follow the first's, and it waits for its own start."""
    cluster = tmp_path_factory.getbasetemp() / "local-cluster"
    command = [sys.executable, "scripts/local_cluster.py", "--serving", "2", "--worker-hosts", "1", "--smoke"]
    command += ["--port", str(free_port()), "--metrics-port", "auto", "--dir", str(cluster)]
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
    logs = {p.name: p.read_text() for p in (cluster / "logs").glob("*.log")}
    assert set(logs) == {"server.log", "worker-1.log"}
    assert all(text.count("derivatives.host: stopped") >= run and "Traceback" not in text for text in logs.values())
