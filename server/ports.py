"""One derivatives server per TCP port on a host, whatever the listen address is spelled, however many processes
serve it.

SO_REUSEPORT (on for the serving processes of one host, server/processes.py) lets any process of the same user join
a port: a second server would start silently and take part of the connections. Each server therefore holds a lock
named after the port number, for as long as any of its processes may listen there: an abstract Unix socket
(`@derivatives-listen-PORT`), bound once per port in the network namespace, as the port itself is. It leaves no
file behind, needs no permissions, and is released by the kernel when the last process holding it ends (the parent
passes it to its children, so orphans still draining keep it until they are gone).
"""

from __future__ import annotations

import socket


class PortLocked(Exception):
    """Another derivatives server holds this port; the message is the one-line refusal to print."""


class PortLock:
    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None

    @classmethod
    def take(cls, port: int, listen: str) -> PortLock:
        """The port's lock, held; PortLocked naming `listen` (what the server was asked to listen on) if another
        server holds it. Taken once the port is bound: port 0 has become a number then."""
        lock = cls(port)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(f"\0derivatives-listen-{port}")
        except OSError:
            sock.close()
            raise PortLocked(
                f"cannot listen on {listen}: is another server running there? "
                f"(another derivatives server holds port {port})"
            ) from None
        lock.sock = sock
        return lock

    def fileno(self) -> int:
        """The descriptor children inherit (pass_fds) to keep the lock while they live."""
        assert self.sock is not None
        return self.sock.fileno()

    def release(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
