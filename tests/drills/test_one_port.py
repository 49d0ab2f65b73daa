"""A second server on a port already served refuses to start (grpcio's default SO_REUSEPORT is off), rather
than starting silently and taking half of the connections."""

from __future__ import annotations

from pathlib import Path

from tests.harness import Postgres, ServerProcess, server_env


def test_a_second_server_on_the_same_port_refuses_to_start(tmp_path: Path, postgres: Postgres) -> None:
    first = ServerProcess(
        server_env("file", postgres.new_database("port"), tmp_path / "one", None), tmp_path / "one.log"
    ).start()
    second = ServerProcess(
        server_env("file", postgres.new_database("port"), tmp_path / "two", None), tmp_path / "two.log", port=first.port
    )
    try:
        second.start(wait_serving=False)
        assert second.proc is not None
        code = second.proc.wait(60)
        second.proc = None
        assert code != 0
        log = (tmp_path / "two.log").read_text()
        assert "cannot listen on" in log and "another server" in log and "Traceback" not in log, log[-2000:]
        assert first.health() == "SERVING"
    finally:
        second.stop()  # if it did start (the test failed), it must not outlive the test
        assert first.stop() == 0, first.tail()
