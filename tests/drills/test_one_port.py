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
        code = second.run_to_exit()
        assert code == 1  # a clean refusal: not a crash (-11), not a hang
        log = (tmp_path / "two.log").read_text()
        assert "cannot listen on" in log and "another server" in log and "Traceback" not in log, log[-2000:]
        assert first.health() == "SERVING"
    finally:
        second.stop()  # if it did start (the test failed), it must not outlive the test
        assert first.stop() == 0, first.tail()


def test_a_taken_http_port_stops_start_up_cleanly(tmp_path: Path, postgres: Postgres) -> None:
    """The HTTP face's port taken: one line, exit 1, every role stopped (uvicorn's own sys.exit inside a task
    would stop the event loop half-way through the shutdown: a crash at exit)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = server_env("file", postgres.new_database("http"), tmp_path / "data", None)
        server = ServerProcess({**env, "DERIVATIVES_HTTP_LISTEN": f"127.0.0.1:{port}"}, tmp_path / "server.log")
        code = server.run_to_exit()
    log = (tmp_path / "server.log").read_text()
    assert code == 1, log[-2000:]
    assert f"cannot listen on 127.0.0.1:{port} (HTTP)" in log and "derivatives.host: stopped" in log
